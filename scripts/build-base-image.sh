#!/usr/bin/env bash
# Make sure the base image our Dockerfiles start FROM (default python:3.11-slim) exists locally.
#
# On a normal machine this is a plain `docker pull`. On a machine without an image registry
# we build a stand-in with debootstrap: Debian bookworm (python3 3.11, same cp311 ABI as the
# official image) with `python` and `pip` on PATH, imported with `docker import`.
#
# Usage: scripts/build-base-image.sh [TAG]
# Environment: LBPROXY_BASE_MIRROR overrides the Debian mirror (default: the host's apt config).
set -euo pipefail

TAG="${1:-python:3.11-slim}"
SUITE="bookworm"
INCLUDE="python3,python3-pip,ca-certificates"
ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${ROOT_DIR}/.cache/base-image"
TARBALL="${CACHE_DIR}/debootstrap-${SUITE}-minbase-$(dpkg --print-architecture 2>/dev/null || uname -m).tgz"

log() { printf '[build-base-image] %s\n' "$*"; }
die() { printf '[build-base-image] ERROR: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine (is it running, and may this user use it?)"

# 1. Already there: nothing to do.
if docker image inspect "$TAG" >/dev/null 2>&1; then
    log "image $TAG already present, nothing to do"
    exit 0
fi

# 2. A registry answers: use the real image.
log "image $TAG missing, trying docker pull (30 s limit)"
if timeout 30 docker pull --quiet "$TAG" >/dev/null 2>&1; then
    log "pulled $TAG"
    exit 0
fi
log "pull failed (no registry reachable), building a Debian $SUITE stand-in with debootstrap"

# 3. Build it. debootstrap, chroot and the rootfs tar need root.
SUDO=()
if [[ $EUID -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        die "building $TAG needs root (debootstrap): run as root or with password-less sudo, or load the image some other way (docker load)"
    fi
fi

# The Debian mirror: whatever the host's apt already uses (never hard-coded here).
find_mirror() {
    local f
    if [[ -r /etc/apt/sources.list ]]; then
        # one-line format: deb [options] URI suite components
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; break } }' \
            /etc/apt/sources.list
    fi
    for f in /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; break } }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        # deb822 format: "URIs: uri [uri ...]"
        awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "$f"
    done
}
MIRROR="${LBPROXY_BASE_MIRROR:-}"
if [[ -z $MIRROR ]]; then
    MIRROR="$(find_mirror | grep -E '^https?://[^ ]*/debian/?$' | grep -v -- '-security' | head -n 1 || true)"
fi
[[ -n $MIRROR ]] || die "no Debian mirror found in /etc/apt/sources.list{,.d/*.list,.d/*.sources}; set LBPROXY_BASE_MIRROR"
log "using Debian mirror from host apt configuration: $MIRROR"

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap with apt-get"
    command -v apt-get >/dev/null 2>&1 || die "debootstrap is missing and apt-get is not available to install it"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq debootstrap >/dev/null 2>&1 \
        || { "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null && "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq debootstrap >/dev/null; } \
        || die "apt-get install debootstrap failed"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/lbproxy-base.XXXXXX")"
ROOTFS="${WORK}/rootfs"
cleanup() {
    # debootstrap mounts proc/sys (and maybe dev) inside the target: unmount before deleting.
    local m
    if [[ -d $WORK ]]; then
        while read -r m; do
            "${SUDO[@]}" umount -l "$m" 2>/dev/null || true
        done < <(awk -v w="$WORK" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r)
        "${SUDO[@]}" rm -rf --one-file-system "$WORK"
    fi
}
trap cleanup EXIT

mkdir -p "$CACHE_DIR"
if [[ -s $TARBALL ]]; then
    log "reusing cached package tarball ${TARBALL#"$ROOT_DIR"/}"
else
    log "downloading packages into ${TARBALL#"$ROOT_DIR"/} (once per machine)"
    "${SUDO[@]}" debootstrap --variant=minbase --include="$INCLUDE" \
        --make-tarball="${WORK}/packages.tgz" "$SUITE" "${WORK}/download" "$MIRROR" \
        >"${WORK}/make-tarball.log" 2>&1 \
        || { tail -n 20 "${WORK}/make-tarball.log" >&2; die "debootstrap --make-tarball failed"; }
    "${SUDO[@]}" mv "${WORK}/packages.tgz" "$TARBALL"
fi

log "debootstrap --variant=minbase $SUITE (python3, pip, ca-certificates)"
"${SUDO[@]}" debootstrap --variant=minbase --include="$INCLUDE" \
    --unpack-tarball="$TARBALL" "$SUITE" "$ROOTFS" "$MIRROR" >"${WORK}/debootstrap.log" 2>&1 \
    || { tail -n 20 "${WORK}/debootstrap.log" >&2; die "debootstrap failed (log above); delete $TARBALL if it is stale"; }

log "making it look like the official image (python/pip on PATH, pip allowed to install)"
"${SUDO[@]}" ln -sf /usr/bin/python3 "${ROOTFS}/usr/local/bin/python"
"${SUDO[@]}" ln -sf /usr/bin/pip3 "${ROOTFS}/usr/local/bin/pip"
"${SUDO[@]}" sh -c "rm -f '${ROOTFS}'/usr/lib/python3*/EXTERNALLY-MANAGED"
"${SUDO[@]}" chroot "$ROOTFS" python --version >/dev/null || die "python does not run in the new root"
"${SUDO[@]}" chroot "$ROOTFS" pip --version >/dev/null || die "pip does not run in the new root"

log "trimming apt lists, caches, docs and man pages"
"${SUDO[@]}" sh -c "
    set -e
    for m in \$(awk -v r='${ROOTFS}' 'index(\$2, r) == 1 { print \$2 }' /proc/mounts | sort -r); do
        umount -l \"\$m\" || true
    done
    cd '${ROOTFS}'
    rm -rf var/lib/apt/lists/* var/cache/apt/*.bin var/cache/apt/archives/*.deb \
           var/cache/debconf/*-old var/log/*.log var/log/apt/* \
           usr/share/doc/* usr/share/man/* usr/share/info/* tmp/* debootstrap
"

log "importing the root filesystem as $TAG"
"${SUDO[@]}" tar --numeric-owner -C "$ROOTFS" -c . \
    | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "lbproxy stand-in for $TAG: debootstrap $SUITE minbase + $INCLUDE" \
        - "$TAG" >/dev/null \
    || die "docker import failed"

docker run --rm "$TAG" python -c 'import sys, ssl; assert sys.version_info[:2] == (3, 11), sys.version' \
    || die "the imported image does not run Python 3.11"
log "built $TAG ($(docker image inspect --format '{{.Size}}' "$TAG" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
