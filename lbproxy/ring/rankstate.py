"""The next rank-order Maglev table derived from the last one (issue 10: additions).

A full build of the default table (M = 4,194,287) walks about M ln M visits: 1.3 s at
N = 10, 4-7 s at N = 100, a worker core busy meanwhile, and an ``/add`` or a replacement
waits for it. But the table is a pure function of the member set: entry ``e``'s owner and
runner-up are the two replicas with the smallest (best rank at ``e``, name); so the build
worker keeps, for the last table it made, every entry's owner and runner-up and their best
ranks (``RankState``), and the next member set is derived from it:

- a replica that left (or whose weight changes) is taken out of the entries it owned or was
  runner-up of, which are settled directly among the replicas that stay (each
  permutation's rank of entry ``e`` is ``Ginv((e - offset) / skip)``,
  ``maglev.settle_numpy``), about 2M/N entries times v permutations;
- a replica that joins (or whose weight changed) gets its best rank at every entry, the
  minimum over its w permutations (O(M w), vectorized), and takes the entries where
  (its rank, its name) beats the owner's (the owner becomes the runner-up) or the
  runner-up's.

Ties are broken by name order, as in the full build, whose priority ``rank * v + i`` orders
permutations by replica name first. The result is the full build's, entry by entry
(tests/test_ring_rankstate.py); a derivation is used only when its estimated cost is below
a full build's (``_cheaper``), else the state is rebuilt from scratch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lbproxy.ring.base import Ring
from lbproxy.ring.maglev import (
    _DIRECT_MAX,
    MaglevFamily,
    _fill_rank_numpy,
    _numpy,
    _rank_tables,
    pack_ring,
    permutations,
    settle_numpy,
)

__all__ = ["RankState", "build", "derive", "full"]

#: The rank of "no runner-up" (one replica): above every real rank (< M < 2^22).
NO_RANK = 0xFFFFFFFF
#: Entries settled at once (bounds the temporary arrays to a few tens of MiB).
_BLOCK = 1 << 20


@dataclass(eq=False)
class RankState:
    """Every entry's owner and runner-up (slot indices into ``names``; runner -1: none) and
    their best ranks, for the sorted ``names`` with ``weights``, in a table of ``m``."""

    m: int
    names: tuple[str, ...]
    weights: tuple[int, ...]
    owner: Any
    orank: Any
    runner: Any
    rrank: Any
    #: How this state was made: "full" or "derived" (benchmarks and tests read it).
    how: str = "full"
    #: Set once a derivation starts reusing the arrays: the state is no longer valid.
    spent: bool = False

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.owner, self.orank, self.runner, self.rrank)))


def _slot_dtype(n: int) -> Any:
    np = _numpy()
    return np.int16 if n < (1 << 15) else np.int32


def full(m: int, names: list[str], weights: tuple[int, ...]) -> RankState:
    """The state of a full build over sorted ``names`` (the same fill as ``build``)."""
    np = _numpy()
    dtype = _slot_dtype(len(names))
    offsets, skips, reals = permutations(m, names, weights)
    if len(names) == 1:
        return RankState(
            m,
            tuple(names),
            tuple(weights),
            np.zeros(m, dtype=dtype),
            best_ranks(m, offsets, skips),
            np.full(m, -1, dtype=dtype),
            np.full(m, NO_RANK, dtype=np.uint32),
        )
    best, second = _fill_rank_numpy(m, offsets, skips, reals)
    real = np.array(reals, dtype=dtype)
    v = len(reals)
    return RankState(
        m,
        tuple(names),
        tuple(weights),
        real[best % v],
        (best // v).astype(np.uint32),
        real[second % v],
        (second // v).astype(np.uint32),
    )


def best_ranks(m: int, offsets: list[int], skips: list[int]) -> Any:
    """One replica's best rank at every entry: the minimum over its permutations of
    ``Ginv((e - offset) * skip^-1 mod M)``, a ``uint32`` array of ``m``."""
    np = _numpy()
    ginv = np.frombuffer(_rank_tables(m)[1], dtype=np.uint32)
    out = np.empty(m, dtype=np.uint32)
    for lo in range(0, m, _BLOCK):
        e = np.arange(lo, min(m, lo + _BLOCK), dtype=np.int64)
        best = None
        for offset, skip in zip(offsets, skips, strict=True):
            inv = pow(skip, -1, m)
            # (e - offset) * inv mod m, as e * inv + c with c = -offset * inv mod m
            rank = ginv[(e * inv + (-offset * inv) % m) % m]
            best = rank if best is None else np.minimum(best, rank, out=best)
        out[lo : lo + len(e)] = best
    return out


def _cheaper(
    state: RankState,
    affected: int,
    kept_v: int,
    added_v: int,
    new_v: int,
) -> bool:
    """Whether deriving beats a full build, both in "rank reads" (one permutation's rank
    of one entry, the unit both spend their time in).

    A derivation reads ``affected * kept_v`` ranks to settle the entries that lost their
    owner or runner-up, ``M * added_v`` for the joining permutations, and a few passes
    over the table (remapping slots, comparing). A full build reads ``M * v`` ranks when it
    settles every entry directly (v <= 8) and walks about ``M * ln M`` visits otherwise,
    each ~1.5 rank reads' worth of ``minimum.at`` (bench/ring_derive.py, docs/ring.md).
    """
    m = state.m
    derive = affected * kept_v + m * (added_v + _PASSES)
    direct = new_v <= _DIRECT_MAX
    rebuild = m * new_v if direct else m * math.log(m) * _WALK_COST
    return derive < rebuild


#: A derivation's fixed passes over the table, in rank reads an entry (remap, compare, copy).
_PASSES = 1.0
#: A walking visit's cost in rank reads (measured at N = 100: a fill of 23 permutation passes,
#: 1.5 an ``M ln M`` visit; bench/ring_derive.py).
_WALK_COST = 1.5


def derive(
    state: RankState, names: list[str], weights: tuple[int, ...], *, always: bool = False
) -> RankState | None:
    """The state for sorted ``names`` with ``weights`` derived from ``state`` (which it
    consumes: its arrays are reused, and it is marked ``spent``), or None when nothing
    stays or, unless ``always``, a full build is cheaper (then ``state`` is untouched)."""
    np = _numpy()
    m = state.m
    old = dict(zip(state.names, state.weights, strict=True))
    new = dict(zip(names, weights, strict=True))
    dropped = {x for x, w in old.items() if new.get(x) != w}  # left, or weight changed
    joining = [x for x in names if old.get(x) != new[x]]  # joined, or weight changed
    kept = [x for x in names if x in old and x not in dropped]
    if not kept:
        return None
    gone = np.zeros(len(state.names) + 1, dtype=bool)  # the last one: runner -1 (none)
    for i, x in enumerate(state.names):
        gone[i] = x in dropped
    owner, runner = state.owner, state.runner
    hit = np.flatnonzero(gone[owner] | gone[runner]) if dropped else np.empty(0, np.int64)
    kept_v = sum(new[x] for x in kept)
    added_v = sum(new[x] for x in joining)
    if not always and not _cheaper(state, len(hit), kept_v, added_v, sum(weights)):
        return None
    state.spent = True  # from here on its arrays are being rewritten
    pos = {x: i for i, x in enumerate(names)}
    dtype = _slot_dtype(len(names))
    orank, rrank = state.orank, state.rrank
    if tuple(names) != state.names:
        remap = np.array([pos.get(x, 0) for x in state.names] + [-1], dtype=dtype)
        owner, runner = remap[owner], remap[runner]  # runner -1 stays -1 (the last one)
    if len(hit):
        kept_offsets, kept_skips, kept_reals = permutations(m, kept, [new[x] for x in kept])
        real = np.array([pos[kept[r]] for r in kept_reals], dtype=dtype)
        v = len(kept_reals)
        big = np.int64(1) << 62
        for lo in range(0, len(hit), _BLOCK):
            e = hit[lo : lo + _BLOCK]
            first, second = settle_numpy(m, kept_offsets, kept_skips, kept_reals, e)
            owner[e] = real[first % v]
            orank[e] = first // v
            some = second < big
            runner[e] = np.where(some, real[second % v], -1)
            rrank[e] = np.where(some, second // v, NO_RANK)
    for x in joining:
        p = pos[x]
        offsets, skips, _ = permutations(m, [x], [new[x]])
        rank = best_ranks(m, offsets, skips)
        wins = (rank < orank) | ((rank == orank) & (p < owner))
        # runner -1 (none) has NO_RANK, above every rank: the second test never sees it
        seconds = ~wins & ((rank < rrank) | ((rank == rrank) & (p < runner)))
        at = np.flatnonzero(wins)
        runner[at] = owner[at]
        rrank[at] = orank[at]
        owner[at] = p
        orank[at] = rank[at]
        at = np.flatnonzero(seconds)
        runner[at] = p
        rrank[at] = rank[at]
    return RankState(m, tuple(names), tuple(weights), owner, orank, runner, rrank, "derived")


def ring_of(family: MaglevFamily, state: RankState) -> Ring:
    """The ring a state describes (``family`` names it)."""
    weighted = state.weights if any(x != 1 for x in state.weights) else None
    return pack_ring(family.name, state.names, state.owner, state.runner, weighted)


def build(
    family: MaglevFamily,
    previous: RankState | None,
    members: Mapping[str, int],
    weights: Mapping[str, int] | None,
) -> tuple[Ring, RankState]:
    """``family.build_with_state``: the ring over ``members``, derived from ``previous``
    when it is of this table size and deriving is cheaper, and its state."""
    names, w = family.validated(members, weights)
    state = None
    if previous is not None and previous.m == family.slots:
        state = derive(previous, names, w)
    if state is None:
        state = full(family.slots, names, w)
    return ring_of(family, state), state
