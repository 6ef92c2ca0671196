#!/usr/bin/env bash
# Install the load generator and the reference proxies `make bench` compares lbproxy with:
# wrk, HAProxy and NGINX, from Debian's own packages (apt-get), only when one is missing.
#
# The packages' system services are never started: while apt-get runs, a policy-rc.d that
# answers 101 ("action forbidden") is in place (an existing one is kept as it is), and any
# service that runs anyway afterwards is stopped and disabled. The bench starts its own
# instances with its own config files, bound to 127.0.0.1 on free ports.
set -euo pipefail

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "bench: missing ${need[*]}; install them as root first:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
    echo "  (then stop their services: sudo systemctl disable --now nginx haproxy)" >&2
    exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "bench: missing ${need[*]} and this is not a Debian-like system (no apt-get)" >&2
    exit 2
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# temporary, from lbproxy bench/install-tools.sh: start no service\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
fi
cleanup() {
    if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi
}
trap cleanup EXIT

echo "bench: installing ${need[*]} from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need[@]}" >/dev/null

# Belt and braces: whatever init system there is, leave no system nginx/haproxy running.
for svc in nginx haproxy; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now "$svc" >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$svc" ]; then
        if "/etc/init.d/$svc" status >/dev/null 2>&1; then
            "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
        fi
        command -v update-rc.d >/dev/null 2>&1 && update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
done
echo "bench: installed: $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2), $(/usr/sbin/haproxy -v | head -n1 | cut -d' ' -f1-3), $(/usr/sbin/nginx -v 2>&1)"
