#!/usr/bin/env bash
# `make bench`: tools, then the HTTP comparison with a profile, then memory and ring figures.
#   BENCH_QUICK=1      short runs for a smoke test (about 2.5 minutes)
#   BENCH_CONNECTIONS  load points (default 64,500,1500); BENCH_IDLE idle clients (10000)
#   BENCH_ONLY=http    only the HTTP comparison (+ profile); =tail: only bench/tail.py
#                      (lbproxy vs HAProxy, own replicas each); =memory: only memory
#   BENCH_PROFILE=0    skip the py-spy profile
#   BENCH_TAG=name     name the result/profile files (profile-<name>.svg); BENCH_LBPROXY_SRC=dir
#                      measures another lbproxy tree (see docs/performance.md)
#   BENCH_BASELINE_SRC=dir  also a second lbproxy from that tree ("before"), alternating with
#                      this one each round: issue 9's before/after in one run
# Every process the Python scripts start is stopped when they exit, Ctrl-C included.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${BENCH_PYTHON:-.venv/bin/python}
only=${BENCH_ONLY:-all}
start=$(date +%s)

bash bench/install-tools.sh

profile=(--profile)
if [ "${BENCH_PROFILE:-1}" = "0" ]; then
    profile=()
elif [ ! -x "$(dirname "$PY")/py-spy" ] && ! command -v py-spy >/dev/null 2>&1; then
    "$PY" -m pip install --quiet py-spy \
        || echo "bench: py-spy could not be installed; the profile is skipped" >&2
fi

if [ "$only" = "all" ] || [ "$only" = "http" ]; then
    "$PY" bench/http_bench.py --idle "${profile[@]}"
fi
if [ "$only" = "all" ] || [ "$only" = "tail" ]; then
    # Issue 14 like for like: each proxy its own replicas, HAProxy with lbproxy's maxconn.
    "$PY" bench/tail.py
fi
if [ "$only" = "all" ] || [ "$only" = "memory" ]; then
    "$PY" bench/memory.py
fi
echo "make bench took $(( $(date +%s) - start ))s; results in bench/results/"
