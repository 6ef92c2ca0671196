#!/usr/bin/env bash
# Run the test tiers in order and stop at the end of the first tier that fails:
#   bash scripts/test-tiers.sh unit,inprocess process docker slow   (make test)
#   bash scripts/test-tiers.sh unit,inprocess                       (make test-fast)
# An argument is `pytest --tier NAME[,NAME...]` (tests/conftest.py says which test is in
# which tier). Tiers joined by a comma share one pytest session, which still runs them in
# order and stops at the end of the first that fails (the conftest prints each one's time):
# this saves pytest's start-up and collection (4-7 s per session on a busy 2-core machine).
# pytest's exit 5 (nothing collected) fails a tier that must have tests; the docker tier
# may be empty only when no Docker engine answers `docker info` (its tests then skip).
# Extra pytest arguments come from PYTEST_ARGS (word-split, like make's variable).
set -uo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT_DIR"
# Let Python keep its bytecode (and pytest its assertion-rewritten modules) in __pycache__:
# with PYTHONDONTWRITEBYTECODE set, every tier recompiles every test and plugin module
# (hypothesis, schemathesis), which doubled the start-up CPU of each tier here.
unset PYTHONDONTWRITEBYTECODE
PY="${TIERS_PYTHON:-${ROOT_DIR}/.venv/bin/python}"
[[ $# -gt 0 ]] || { echo "usage: $0 TIER..." >&2; exit 2; }

docker_answers() { command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1; }

now() { date +%s.%N; }
for tier in "$@"; do
    start="$(now)"
    echo "== tier ${tier}: pytest --tier ${tier} ${PYTEST_ARGS:-}"
    # shellcheck disable=SC2086  # PYTEST_ARGS is a list of words on purpose
    "$PY" -m pytest --tier "$tier" ${PYTEST_ARGS:-}
    rc=$?
    took="$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }')"
    if [[ $rc -eq 5 ]]; then
        if [[ $tier == docker ]] && ! docker_answers; then
            echo "== tier ${tier}: no tests ran (no Docker engine answers 'docker info'): ${took}"
            continue
        fi
        echo "== tier ${tier}: pytest collected no tests: failing (${took})" >&2
        exit 1
    fi
    if [[ $rc -ne 0 ]]; then
        echo "== tier ${tier} failed (pytest exit ${rc}, ${took}); later tiers not run" >&2
        exit "$rc"
    fi
    echo "== tier ${tier} passed in ${took}"
done
