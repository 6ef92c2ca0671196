#!/usr/bin/env bash
# The one entry point before anything that needs the Docker images (make test, CI):
#   1. the base image python:3.11-slim (pulled, or built locally when there is no registry),
#   2. wheels/ (host-built wheels, so image builds need no package index; also the
#      lbproxy-tools wheel, which no image installs: see scripts/build-wheels.sh),
#   3. lbproxy-server:latest (Dockerfile.server) and lbproxy-lb:latest (Dockerfile.lb),
#   4. lbproxy-socket-proxy:latest (socket-proxy/Dockerfile: HAProxy from .deb files the
#      host's apt downloads, so the build needs no package index either),
# with the classic builder (`docker build`), timing each step, then the image sizes.
# Idempotent: a second run reuses the base image, the wheels and Docker's layer cache.
#
# Environment:
#   LBPROXY_PIP_OPTS   pip options for the image builds (default --no-index: wheels/ only)
#   LBPROXY_BASE_IMAGE base image tag (default python:3.11-slim)
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT_DIR"
BASE_IMAGE="${LBPROXY_BASE_IMAGE:-python:3.11-slim}"
# wheels/ holds every wheel the images need once build-wheels.sh has run, so --no-index is
# right with or without a registry, and it keeps the builds independent of the network.
PIP_OPTS="${LBPROXY_PIP_OPTS---no-index}"
LOG_DIR="${ROOT_DIR}/.cache/ensure-images"
mkdir -p "$LOG_DIR"

log() { printf '[ensure-images] %s\n' "$*"; }
die() { printf '[ensure-images] ERROR: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker engine (is it running, and may this user use it?)"

# One run at a time (parallel test sessions would otherwise race on wheels/ and the tags).
if command -v flock >/dev/null 2>&1; then
    exec 9>"${LOG_DIR}/lock"
    if ! flock --nonblock 9; then
        log "another ensure-images.sh is running; waiting for it"
        flock 9
    fi
fi

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
TOTAL_START="$(now)"

step() {  # step NAME COMMAND...: run, time, and fail loudly
    local name="$1" start
    shift
    start="$(now)"
    log "$name ..."
    "$@" || die "$name failed (exit $?)"
    log "$name done in $(elapsed "$start")"
}

build_image() {  # build_image DOCKERFILE TAG
    local dockerfile="$1" tag="$2" logfile
    logfile="${LOG_DIR}/$(basename "$dockerfile").log"
    # The build stage gets a tag of its own (…:build-cache) so that it is not a dangling
    # image: then the prune below removes only outdated lbproxy layers, never the layer
    # cache the next build reuses.
    if ! { docker build --force-rm -f "$dockerfile" --target build -t "${tag%%:*}:build-cache" \
               --build-arg "PIP_OPTS=${PIP_OPTS}" --build-arg "PYTHON_IMAGE=${BASE_IMAGE}" . \
           && docker build --force-rm -f "$dockerfile" -t "$tag" \
               --build-arg "PIP_OPTS=${PIP_OPTS}" --build-arg "PYTHON_IMAGE=${BASE_IMAGE}" . ; \
         } >"$logfile" 2>&1; then
        tail -n 30 "$logfile" >&2
        log "full log: ${logfile#"$ROOT_DIR"/}" >&2
        return 1
    fi
}

step "base image ${BASE_IMAGE}" bash scripts/build-base-image.sh "$BASE_IMAGE"
step "wheels" bash scripts/build-wheels.sh
step "image lbproxy-server:latest (Dockerfile.server, PIP_OPTS='${PIP_OPTS}')" \
    build_image Dockerfile.server lbproxy-server:latest
step "image lbproxy-lb:latest (Dockerfile.lb, PIP_OPTS='${PIP_OPTS}')" \
    build_image Dockerfile.lb lbproxy-lb:latest
build_socket_proxy() {
    bash socket-proxy/fetch-debs.sh "$BASE_IMAGE" \
    && docker build --force-rm -t lbproxy-socket-proxy:latest \
           --build-arg "BASE_IMAGE=${BASE_IMAGE}" socket-proxy >"${LOG_DIR}/socket-proxy.log" 2>&1 \
    || { tail -n 30 "${LOG_DIR}/socket-proxy.log" >&2; return 1; }
}
step "image lbproxy-socket-proxy:latest (socket-proxy/Dockerfile)" build_socket_proxy

# Images (and build stages) that a rebuild has replaced: dangling and labelled as ours.
# Images still used by a container (e.g. a running replica) are kept by the engine.
docker image prune --force --filter label=org.lbproxy.project=lbproxy >/dev/null \
    || log "warning: could not prune outdated lbproxy images"

docker run --rm --entrypoint python lbproxy-server:latest -c 'import server_app, aiohttp, uvloop, xxhash' \
    || die "lbproxy-server:latest cannot import its packages"
docker run --rm --entrypoint python lbproxy-lb:latest -c 'import lbproxy, aiohttp, aiodocker' \
    || die "lbproxy-lb:latest cannot import its packages"
# The balancer image carries only the balancer (issue 13): no load client, no analysis, no
# matplotlib. (lbproxy-tools is built into wheels/ by build-wheels.sh and installed on the
# host from the checkout, `pip install . ./tools`; `lbproxy loadtest` then drives the published
# port.)
docker run --rm --entrypoint python lbproxy-lb:latest -c '
import importlib.util, sys
found = [m for m in ("lbproxy_tools", "matplotlib", "tqdm", "jinja2") if importlib.util.find_spec(m)]
sys.exit(f"tooling in the balancer image: {found}" if found else 0)' \
    || die "lbproxy-lb:latest carries tooling"
docker run --rm --entrypoint haproxy lbproxy-socket-proxy:latest -v >/dev/null \
    || die "lbproxy-socket-proxy:latest cannot run haproxy"

log "all images ready in $(elapsed "$TOTAL_START")"
docker image ls --format 'table {{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}' \
    | awk -v base="$BASE_IMAGE" 'NR == 1 || $1 == base || $1 ~ /^lbproxy-(server|lb|socket-proxy):latest$/'
