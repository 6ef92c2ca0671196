#!/usr/bin/env bash
# Build, on the host, every wheel the images need into wheels/, so that `docker build` can
# install with `--build-arg PIP_OPTS=--no-index` on a machine whose containers cannot reach
# a package index. Host Python must be CPython 3.11 (cp311, like the image's python).
#
# wheels/ gets: the lbproxy wheel itself, its dependencies with the `docker` extra (aiohttp,
# uvloop, xxhash, aiodocker and everything they pull in), and the build backend
# (setuptools, wheel) so the images can build the project from source without an index.
# pip uses its own configured index; nothing here names one.
#
# It also gets the lbproxy-tools wheel (tools/pyproject.toml: `lbproxy loadtest`, `lbproxy
# analyze`), built the same way from a scratch copy, WITHOUT its dependencies (matplotlib,
# tqdm, jinja2): no image installs it. The balancer image carries only the balancer (issue
# 13), and a load client belongs outside the container it measures: a Compose user runs
# `lbproxy loadtest --url http://127.0.0.1:$LBPROXY_HOST_PORT` on the host
# (`pip install . ./tools` from the checkout, or `pip install wheels/lbproxy-*.whl
# wheels/lbproxy_tools-*.whl` with an index for its dependencies: both of ours from local
# files, since neither name is ours on a public index and lbproxy has no `tools` extra).
# Both wheels are checked: one version, lbproxy's without lbproxy_tools and without any
# requirement on lbproxy-tools, lbproxy-tools' with its report templates (package data).
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${ROOT_DIR}/wheels"

log() { printf '[build-wheels] %s\n' "$*"; }
die() { printf '[build-wheels] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ -x "${ROOT_DIR}/.venv/bin/pip" ]]; then
    PIP=("${ROOT_DIR}/.venv/bin/pip")
    PY="${ROOT_DIR}/.venv/bin/python"
else
    PIP=(python3 -m pip)
    PY=python3
fi
"${PIP[@]}" --version >/dev/null 2>&1 || die "pip not available (${PIP[*]})"
abi="$("$PY" -c 'import sys; print(f"{sys.implementation.name}{sys.version_info[0]}{sys.version_info[1]}")')"
[[ $abi == cpython311 ]] || die "host Python is $abi; the images run CPython 3.11 and need cp311 wheels"

mkdir -p "$WHEELS"
# The build backend: pyproject.toml's [build-system] requires, for building the project
# inside the image (pip's build isolation) without an index.
build_requires="$("$PY" - "${ROOT_DIR}/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
EOF
)"
mapfile -t build_requires <<<"$build_requires"

# Build the project from a scratch copy of what the images copy (pyproject.toml, README.md,
# lbproxy/, server_app/): setuptools' in-tree build/ and *.egg-info are never touched, and a
# module deleted from the source cannot linger in the wheel from an old build/lib.
SRC="$(mktemp -d "${TMPDIR:-/tmp}/lbproxy-wheel-src.XXXXXX")"
trap 'rm -rf "$SRC"' EXIT
cp "${ROOT_DIR}/pyproject.toml" "$SRC/"
[[ -f "${ROOT_DIR}/README.md" ]] && cp "${ROOT_DIR}/README.md" "$SRC/"
for pkg in lbproxy server_app; do
    cp -r "${ROOT_DIR}/${pkg}" "$SRC/"
done
# lbproxy-tools: tools/pyproject.toml takes its package from ../lbproxy_tools, so the copy
# keeps that layout (its own directory: the lbproxy build above never sees lbproxy_tools).
TOOLS_SRC="$(mktemp -d "${TMPDIR:-/tmp}/lbproxy-tools-wheel-src.XXXXXX")"
trap 'rm -rf "$SRC" "$TOOLS_SRC"' EXIT
mkdir "$TOOLS_SRC/tools"
cp "${ROOT_DIR}/tools/pyproject.toml" "$TOOLS_SRC/tools/"
cp -r "${ROOT_DIR}/lbproxy_tools" "$TOOLS_SRC/"
find "$SRC" "$TOOLS_SRC" -name __pycache__ -type d -prune -exec rm -rf {} +

log "using ${PIP[*]} ($("${PIP[@]}" --version | awk '{print $2}'))"
WANT=("${SRC}[docker]" "${build_requires[@]}")
# Offline first: when wheels/ already satisfies every requirement (the usual case on a
# second run), this rebuilds only the lbproxy wheel, without asking the index anything.
# A new or changed requirement makes it fail, and the index is asked below.
# LBPROXY_WHEELS_REFRESH=1 skips this, so newer releases are picked up.
if [[ ${LBPROXY_WHEELS_REFRESH:-0} != 1 ]] \
    && "${PIP[@]}" wheel --quiet --disable-pip-version-check --no-index --find-links "$WHEELS" \
        --wheel-dir "$WHEELS" "${WANT[@]}" >/dev/null 2>&1; then
    log "wheels/ already satisfies lbproxy[docker] and ${build_requires[*]}: rebuilt only the lbproxy wheel (offline)"
else
    log "building wheels for lbproxy[docker] and its dependencies, and fetching the build backend (${build_requires[*]}), into wheels/"
    # --find-links wheels: a wheel built or downloaded last time is reused, not fetched again.
    "${PIP[@]}" wheel --quiet --disable-pip-version-check --find-links "$WHEELS" \
        --wheel-dir "$WHEELS" "${WANT[@]}" \
        || die "pip wheel '.[docker]' ${build_requires[*]} failed"
fi

# lbproxy-tools: its own wheel only (see the top). The build backend is in wheels/ by now.
rm -f "$WHEELS"/lbproxy_tools-*.whl
# --no-index: its build backend (setuptools, wheel) is lbproxy's, in wheels/ since the step above.
"${PIP[@]}" wheel --quiet --disable-pip-version-check --no-deps --no-index --find-links "$WHEELS" \
    --wheel-dir "$WHEELS" "$TOOLS_SRC/tools" >/dev/null 2>&1 \
    || die "pip wheel tools/ (lbproxy-tools) failed"

# The two wheels agree with each other and hold what they should (scripts/check-wheels.py).
"$PY" "${ROOT_DIR}/scripts/check-wheels.py" "$WHEELS" "${ROOT_DIR}/pyproject.toml" \
    || die "the lbproxy / lbproxy-tools wheels in wheels/ are inconsistent"

# Every wheel must install on the image's CPython 3.11 / glibc on this machine's
# architecture (the images are built for it), or be pure Python.
arch="$(uname -m)"
bad="$(find "$WHEELS" -maxdepth 1 -name '*.whl' -printf '%f\n' \
        | grep -v -E -- "-(py3|py2\\.py3|cp3[0-9]*)-(none|cp311|abi3)-(any|manylinux[^ ]*${arch}|linux_${arch})\\.whl\$" || true)"
if [[ -n $bad ]]; then
    log "warning: wheels that may not install in the image (platform/ABI tag):"
    printf '    %s\n' $bad
fi
count="$(find "$WHEELS" -maxdepth 1 -name '*.whl' | wc -l)"
log "wheels/ holds ${count} wheels ($(du -sh "$WHEELS" | cut -f1))"
