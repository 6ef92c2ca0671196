#!/usr/bin/env bash
# Install Debian's chromium for the dashboard's browser test (tests/test_dashboard.py).
# Idempotent: does nothing when a chromium binary is already on PATH. Never fails the build:
# without root (or sudo) it says so and exits 0, and the browser test skips with a reason.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "install-chromium: $(command -v chromium || command -v chromium-browser) already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: no apt-get here; install chromium yourself (the browser test skips)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "install-chromium: not root and no passwordless sudo; skipping (the browser test skips)"
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
# fonts-dejavu-core: the dashboard's first font choice, so screenshots look the same everywhere
$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -q chromium fonts-dejavu-core
echo "install-chromium: installed $(command -v chromium)"
