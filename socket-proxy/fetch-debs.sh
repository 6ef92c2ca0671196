#!/usr/bin/env bash
# Download HAProxy and the packages it needs beyond the base image into socket-proxy/debs/,
# so that the socket-proxy image builds where containers cannot reach a package index.
# Uses the host's apt (its configured mirror; never a hard-coded one): the host must run the
# same Debian release as the base image (bookworm). Idempotent: a second run downloads nothing.
#
# Usage: socket-proxy/fetch-debs.sh [BASE_IMAGE]   (default python:3.11-slim)
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BASE_IMAGE="${1:-python:3.11-slim}"
log() { printf '[socket-proxy debs] %s\n' "$*"; }

if ls "$DIR"/debs/haproxy_*.deb >/dev/null 2>&1; then
    log "debs/ holds haproxy already: nothing to do"
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || { log "no apt-get on this host: the image build will use apt-get itself"; exit 0; }

installed="$(docker run --rm --entrypoint dpkg-query "$BASE_IMAGE" -W -f '${Package}\n')"
# Walk haproxy's Depends/PreDepends (first alternative of each), skipping what the base
# image has: the few packages dpkg -i then needs.
declare -A seen=()
queue=(haproxy)
wanted=()
while ((${#queue[@]})); do
    pkg="${queue[0]}"
    queue=("${queue[@]:1}")
    [[ -n ${seen[$pkg]:-} ]] && continue
    seen[$pkg]=1
    grep -qx "$pkg" <<<"$installed" && continue
    wanted+=("$pkg")
    while read -r dep; do
        queue+=("$dep")
    done < <(apt-cache depends --no-recommends --no-suggests --no-enhances --no-conflicts \
                 --no-breaks --no-replaces "$pkg" \
             | awk '/^  (Pre)?Depends: / { print $2 }' | tr -d '<>' | sed 's/:any$//')
done
log "downloading: ${wanted[*]}"
cd "$DIR/debs"
apt-get download "${wanted[@]}" >/dev/null
ls -1 "$DIR"/debs/*.deb
