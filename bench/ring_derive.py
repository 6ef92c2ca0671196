"""Full build vs derivation of the default Maglev table, in this process (issue 10).

The build worker keeps the last table's owners, runner-ups and ranks
(``lbproxy.ring.rankstate``) and derives the next member set from them. For each N this
times, at the default table size (or ``--slots``):

- ``full``: a full build of N replicas (what every addition cost before);
- ``add``: the ring over N + 1 derived from the state of N (an ``/add``, a replacement
  rejoining after its removal was derived on the loop);
- ``remove``: the ring over N - 1 derived from the state of N (the rebuild after a
  removal whose derivation on the loop was not exact);
- ``weight``: one replica's weight 1 -> 2, derived;
- ``pack``: of each, the part spent packing the table and its pair counts.

Each figure is the median of ``--repeat`` runs (ms). Also prints the rank-read costs that
``rankstate._cheaper`` weighs (one permutation's ranks of every entry; a walk's visit)::

    flock /tmp/lbproxy-heavy.lock .venv/bin/python bench/ring_derive.py --sizes 3,10,100,1000
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lbproxy.ring import rankstate
from lbproxy.ring.maglev import (
    DEFAULT_TABLE_SIZE,
    MaglevFamily,
    _fill_rank_numpy,
    _rank_tables,
    permutations,
)


def timed(fn: Any, repeat: int) -> tuple[float, Any]:
    runs = []
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        runs.append((time.perf_counter() - t) * 1000)
    return statistics.median(runs), out


def step(
    family: MaglevFamily,
    base: rankstate.RankState,
    members: dict[str, int],
    weights: dict[str, int] | None,
    repeat: int,
) -> tuple[float, str]:
    """The median time of ``build_with_state`` from a copy of ``base`` (it is consumed)."""
    runs, how = [], ""
    for _ in range(repeat):
        state = rankstate.RankState(
            base.m,
            base.names,
            base.weights,
            base.owner.copy(),
            base.orank.copy(),
            base.runner.copy(),
            base.rrank.copy(),
        )
        t = time.perf_counter()
        _, out = family.build_with_state(state, members, weights)
        runs.append((time.perf_counter() - t) * 1000)
        how = out.how
    return statistics.median(runs), how


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", default="3,10,100,1000")
    p.add_argument("--slots", type=int, default=DEFAULT_TABLE_SIZE)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    family = MaglevFamily(slots=args.slots)
    m = family.slots
    _rank_tables(m)  # once per process, as in the worker
    names1 = ["solo"]
    off, sk, _ = permutations(m, names1, (1,))
    one_ms, _ = timed(lambda: rankstate.best_ranks(m, off, sk), args.repeat)
    print(f"M = {m}: one permutation's ranks of every entry: {one_ms:.0f} ms")
    print("\n| N | full build ms | add ms | remove ms | weight 1->2 ms | how (add/remove/weight) |")
    print("|---|---|---|---|---|---|")
    for n in [int(x) for x in args.sizes.split(",")]:
        members = {f"replica-{i}": i for i in range(1, n + 1)}
        full_ms, _ = timed(lambda ms=members: family.build_with_state(None, ms), args.repeat)
        base = rankstate.full(m, *family.validated(members, None))
        add_ms, add_how = step(family, base, {**members, "replica-new": n + 1}, None, args.repeat)
        rest = dict(members)
        rest.pop("replica-2", None)
        rm_ms, rm_how = step(family, base, rest, None, args.repeat) if n > 1 else (0.0, "-")
        w_ms, w_how = step(family, base, members, {"replica-1": 2}, args.repeat)
        print(
            f"| {n} | {full_ms:.0f} | {add_ms:.0f} | {rm_ms:.0f} | {w_ms:.0f} "
            f"| {add_how}/{rm_how}/{w_how} |"
        )
        del base
    # calibration of the cost model: a walk's cost per visit in rank reads
    n = 100
    names = [f"replica-{i}" for i in range(1, n + 1)]
    o, s, r = permutations(m, names, (1,) * n)
    walk_ms, _ = timed(lambda: _fill_rank_numpy(m, o, s, r), 1)
    print(
        f"\nfill at N=100: {walk_ms:.0f} ms = {walk_ms / one_ms:.1f} permutation passes; "
        f"M ln M visits would be {walk_ms / one_ms / math.log(m):.2f} passes a visit"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
