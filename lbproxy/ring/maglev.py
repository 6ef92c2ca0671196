"""Maglev-style lookup tables (the default family, ``--hash maglev``).

A key's entry is ``xxh3_64(key) mod M`` in a table of ``M`` entries (a prime sized to the
pool, ``table_size_for``; 4,194,287 at most); the entry names the replica. A lookup is one
hash and two array reads.

Every replica walks its own permutation of the table, derived from
``offset = xxh3_64(name, seed=0) mod M`` and ``skip = xxh3_64(name, seed=1) mod (M - 1) + 1``:
placement depends on replica NAMES, not on ring ids, and replicas are visited in sorted
name order, so the table is a deterministic function of the set of names (and weights).

Two tie rules fill the table:

``maglev`` (the default): **rank order**. Replica ``r`` reaches entry
``(offset_r + skip_r * G(k)) mod M`` at rank ``k``, where ``G(k) = k^3 mod M`` (a power map,
a permutation of ``0..M-1`` whenever 3 is prime to ``M - 1``; another small odd exponent
otherwise). Entry ``e`` belongs to the replica that reaches it at the smallest rank (equal
ranks go to the name that sorts first). That owner is a pure function of ``e`` and the
member set, so adding a replica moves only the entries it wins, to it, and removing one
moves only its own entries: exactly minimal disruption, nothing moves between the replicas
that stay. (``G`` matters: with the paper's ``offset + k*skip`` ranks, two replicas' ranks
are tied by a fixed affine map, and for some pairs of names that lattice skews their shares
by up to 0.85% of the key space; through the power map, as through the earlier sorted-hash
permutation, no share of 200 random sets of 2 to 10 names is more than 0.35% of the key
space above 1/N at M = 65537, and 0.05% at M = 2,097,143.) The power map costs nothing to
store and its inverse is a table the builder computes once.

**Weights.** A replica of weight ``w`` walks ``w`` permutations (seeds ``2j, 2j + 1`` for
``j < w``; the first is its unweighted one) and owns every entry any of them wins: ``w``
unit "virtual replicas". Shares follow the weights exactly as unit shares follow 1/N (1:2:3
gives 0.168 / 0.331 / 0.500 of the default table), and changing one replica's weight adds
or removes only its own permutations, so keys move only to or from it. The runner-up is the
first visitor of another replica.

**Balance and the table size.** A replica's share is a count of entries it wins, so it
deviates from 1/N by about ``0.7 * sqrt(N / M)``: with M = 65537 the largest share at
N = 1000 was 1.27x the mean. M = 4,194,287 (the largest prime below 2^22 for which
``k -> k^3`` permutes) brings it to about 1.04x, with ~4,194 entries a replica at N = 1000.
``lbproxy serve`` sizes the table to the pool its flags declare (``table_size_for``: ~4,096
entries a replica, 65,537 up to 16 replicas): builds are never done on the request path
(``lbproxy.ring.offload`` runs them in a worker process) and removals are derived without a
build, but every change still costs the worker O(M) work, which a busy 2-core machine's
requests feel (docs/performance.md, "The table's size").
The worker does not walk the table again for every change either: it keeps each entry's
owner and runner-up with their ranks and derives the next member set from them (an
addition is one O(M w) pass, ~0.15 s, against 1-2 s for a full build at N = 10-100;
``lbproxy.ring.rankstate``), identical to a full build entry by entry.

**Removal is derived, not rebuilt.** Each entry stores the pair (owner, runner-up): the
runner-up is the second replica to reach the entry in rank order, which is exactly the owner
once the owner leaves. ``MaglevRing.without(names)`` returns the ring without ``names`` in
O(1): it shares the table and notes the departed replicas; a lookup whose owner departed
reads the runner-up. That is identical to a full rebuild by the rank-order rule (the
property test in tests/test_ring_derive.py checks it entry by entry). The runner-up of an
entry whose owner or runner-up departed is unknown until the next build; if both depart
before it (two removals whose entries overlap, about 2/N^2 of the table), those entries fall
back to the next live replica forward in the table and the ring says ``exact = False`` so
the pool rebuilds it off the request path.

``maglev-classic`` (the paper's rule, ranks ``offset + k*skip``): replicas take turns and
each claims the *next free* entry of its permutation. Shares differ by at most one entry,
but a change shifts whose turn reaches which entry, so some keys also move between
replicas that stayed (about 0.1% of keys with fewer than 10 replicas, 0.6% at N = 100 and
N = 1000 with M = 65537). It has no runner-ups, so every change is a build (off the loop).

Fallbacks (``candidates``): the owner, then (rank-order tables) the runner-up, then the
other replicas in the order they appear walking the table forward from the key's entry.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import repeat
from typing import Any

from lbproxy.errors import RingFullError
from lbproxy.ring import shared
from lbproxy.ring._common import EmptyRing, encode, xxh3_64_intdigest
from lbproxy.ring.base import Ring

__all__ = [
    "CLASSIC_TABLE_SIZE",
    "DEFAULT_TABLE_SIZE",
    "MAX_TABLE_SIZE",
    "MAX_WEIGHT",
    "TABLE_SIZES",
    "MaglevFamily",
    "MaglevRing",
    "SharedMaglevRing",
    "is_prime",
    "table_size_for",
]

#: The default table size: the largest prime below 2**22 whose rank map is k^3 (docs/ring.md),
#: ~4,194 entries a replica at N = 1000.
DEFAULT_TABLE_SIZE = 4_194_287
#: The table a pool of N replicas is given when ``--slots`` is unset (``table_size_for``):
#: the smallest of these with at least ``ENTRIES_PER_REPLICA`` entries a replica. Each is the
#: largest prime below a power of two for which ``k -> k^3`` permutes (65,537: the paper's
#: and Envoy's default). A change costs the build worker O(M) work whatever N is, and on a
#: busy 2-core machine that work shows in the requests' p99 (4,194,287 entries at N = 3:
#: ``/add`` took 0.4-0.9 s and its window's p99 1.5-2.5x steady; 65,537: 80 ms and ~1x;
#: docs/performance.md), so a small pool gets a small table.
TABLE_SIZES = (65_537, 131_063, 262_139, 524_261, 1_048_571, 2_097_143, DEFAULT_TABLE_SIZE)
#: Entries a replica needs for the largest share to stay within ~5% of the mean: a share's
#: spread is ~0.7 sqrt(N / M), and the largest of N shares sits about 3 spreads out.
ENTRIES_PER_REPLICA = 4096
#: The classic fill balances to within one entry at any size and has no runner-ups to
#: derive removals from, so it keeps the small table (and its pure-Python build).
CLASSIC_TABLE_SIZE = 65_537
#: Bigger tables cost memory (4 bytes an entry) and build time (~M log N).
MAX_TABLE_SIZE = 1 << 22
#: Largest weight a replica can have (a weight is a number of ranks per round).
MAX_WEIGHT = 100


def is_prime(n: int) -> bool:
    """Trial division; fine for table sizes up to a few million."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def table_size_for(replicas: int) -> int:
    """The default table size for a pool declared at ``replicas`` (``--replicas``, or the
    autoscaler's maximum): ~4,096 entries a replica or more, 4,194,287 from 513 replicas on.

    Sized from the flags, never from what runs, so a restart with the same flags keeps every
    key where it was. A pool grown far past its declared size keeps its table: exactly
    minimal disruption forbids resizing it, so its balance degrades (``--slots`` pins a size).
    """
    for size in TABLE_SIZES:
        if size >= ENTRIES_PER_REPLICA * max(1, replicas):
            return size
    return DEFAULT_TABLE_SIZE


def _next_prime(n: int) -> int:
    while not is_prime(n):
        n += 1
    return n


class MaglevRing:
    """A built Maglev table: entry ``xxh3_64(key) % M`` holds (owner << bits) | runner-up.

    ``slots`` are the replica names the table was built over, in sorted order; a ring
    derived by ``without`` shares the table and the slots and lists the departed slot
    indices in ``_gone``.
    """

    __slots__ = (
        "_bits",
        "_count",
        "_counts",
        "_gone",
        "_keep",
        "_live",
        "_m",
        "_mask",
        "_names",
        "_pairs",
        "_shares",
        "_slots",
        "_table",
        "_weights",
        "exact",
        "family",
    )

    def __init__(
        self,
        family: str,
        slots: tuple[str, ...],
        table: array[int] | memoryview,
        bits: int,
        pairs: tuple[array[int] | memoryview, ...] | None,
        *,
        gone: frozenset[int] = frozenset(),
        weights: tuple[int, ...] | None = None,
        exact: bool = True,
        keep: object = None,
    ) -> None:
        self.family = family
        #: What the arrays are views of (a shared-memory mapping): alive as long as the ring.
        self._keep = keep
        self._slots = slots
        self._table = table
        self._bits = bits
        self._mask = (1 << bits) - 1  # also the "no runner-up known" value
        self._m = len(table)
        self._gone = gone
        self._live = tuple(i for i in range(len(slots)) if i not in gone)
        self._count = len(self._live)
        self._names = frozenset(slots[i] for i in self._live)
        self._weights = weights
        #: (sorted distinct pair values, their entry counts, each slot's entry count as owner):
        #: shares without a table scan, O(N) plus the departed owners' pairs.
        self._pairs = pairs
        self._shares: dict[str, float] | None = None
        self.exact = exact

    def __repr__(self) -> str:
        return f"<MaglevRing family={self.family!r} M={self._m} replicas={self._count}>"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle the arrays as plain bytes: unpickling (on the balancer's side of the build
        worker's pipe, holding the GIL) is then one copy, not two, and they are used in
        place through a memoryview."""
        pairs = None if self._pairs is None else tuple(bytes(a) for a in self._pairs)
        state = (self._gone, self._weights, self.exact)
        code = "H" if self._table.itemsize == 2 else "I"
        return _restore, (
            self.family,
            self._slots,
            bytes(self._table),
            code,
            self._bits,
            pairs,
            state,
        )

    def share(self, segment: str) -> SharedMaglevRing:
        """Write the arrays into shared-memory segment ``segment`` (in the build worker);
        the small descriptor returned crosses the pipe instead of the arrays, and
        ``attach`` maps them on the other side without a copy (``lbproxy.ring.shared``).
        Raises ``OSError`` when the segment cannot be written (a full ``/dev/shm``)."""
        arrays = [self._table] if self._pairs is None else [self._table, *self._pairs]
        size, spans = shared.write(segment, [memoryview(a).cast("B") for a in arrays])
        return SharedMaglevRing(
            family=self.family,
            slots=self._slots,
            code="H" if self._table.itemsize == 2 else "I",
            bits=self._bits,
            segment=segment,
            size=size,
            spans=tuple(spans),
            state=(self._gone, self._weights, self.exact),
        )

    @property
    def names(self) -> frozenset[str]:
        return self._names

    @property
    def size(self) -> int:
        return self._m

    @property
    def weights(self) -> dict[str, int]:
        """The weight of each replica on the ring (1 unless set)."""
        w = self._weights
        return {self._slots[i]: (w[i] if w else 1) for i in self._live}

    @property
    def nbytes(self) -> int:
        """Memory held by this ring's arrays (shared with rings derived from it)."""
        size = self._table.itemsize * len(self._table)
        if self._pairs is not None:
            size += sum(a.itemsize * len(a) for a in self._pairs)
        return size

    @property
    def table(self) -> tuple[str, ...]:
        """The owner of every entry (entry ``e`` serves keys with ``xxh3_64 % M == e``)."""
        return tuple(self._slots[self._owner_at(e)] for e in range(self._m))

    @property
    def slots(self) -> tuple[str, ...]:
        """The names the table was built over (departed ones included), in name order."""
        return self._slots

    def owners(self) -> Any:
        """The owner's slot index of every entry, as a numpy array (for checks and tools)."""
        np = _numpy()
        dtype = np.uint16 if self._table.itemsize == 2 else np.uint32
        pairs = np.frombuffer(self._table, dtype=dtype).astype(np.int64)
        owner = pairs >> self._bits
        if self._gone:
            gone = np.array(sorted(self._gone), dtype=np.int64)
            moved = np.isin(owner, gone)
            runner = pairs & self._mask
            owner = np.where(moved, runner, owner)
            for e in np.flatnonzero(moved & ((runner == self._mask) | np.isin(runner, gone))):
                owner[e] = self._forward(int(e))
        return owner

    def entry_of(self, key: str) -> int:
        """The table entry a key hashes to."""
        return xxh3_64_intdigest(encode(key)) % self._m

    def _owner_at(self, entry: int) -> int:
        pair = self._table[entry]
        owner = pair >> self._bits
        gone = self._gone
        if owner not in gone:
            return owner
        runner = pair & self._mask
        if runner != self._mask and runner not in gone:
            return runner
        return self._forward(entry)

    def _forward(self, entry: int) -> int:
        """The first live owner walking forward from ``entry`` (inexact rings only)."""
        table, bits, mask, gone, m = self._table, self._bits, self._mask, self._gone, self._m
        index = entry
        for _ in range(m):
            index += 1
            if index == m:
                index = 0
            pair = table[index]
            owner = pair >> bits
            if owner not in gone:
                return owner
            runner = pair & mask
            if runner != mask and runner not in gone:
                return runner
        raise AssertionError("a MaglevRing with no live replica")  # pragma: no cover

    def lookup(self, key: str) -> str:
        try:
            data = key.encode()
        except UnicodeEncodeError:
            data = key.encode("utf-8", "surrogatepass")
        entry = xxh3_64_intdigest(data) % self._m
        if not self._gone:
            return self._slots[self._table[entry] >> self._bits]
        return self._slots[self._owner_at(entry)]

    def candidates(self, key: str) -> Iterator[str]:
        entry = xxh3_64_intdigest(encode(key)) % self._m
        first = self._owner_at(entry)
        slots = self._slots
        yield slots[first]
        count = self._count
        if count == 1:
            return
        seen = {first}
        gone = self._gone
        runner = self._table[entry] & self._mask
        if runner != self._mask and runner not in gone and runner != first:
            seen.add(runner)
            yield slots[runner]
            if count == 2:
                return
        size = self._m
        index = entry
        for _ in range(size - 1):
            index += 1
            if index == size:
                index = 0
            owner = self._owner_at(index)
            if owner not in seen:
                seen.add(owner)
                yield slots[owner]
                if len(seen) == count:
                    return
        # Only when some replica won no entry at all (N close to M): the rest, by name.
        for owner in self._live:
            if owner not in seen:
                seen.add(owner)
                yield slots[owner]

    def shares(self) -> dict[str, float]:
        """Each replica's fraction of the table, computed once per ring (rings are immutable)."""
        if self._shares is None:
            self._shares = self._compute_shares()
        return dict(self._shares)

    def _compute_shares(self) -> dict[str, float]:
        slots = self._slots
        counts = [0] * len(slots)
        gone, bits, mask = self._gone, self._bits, self._mask
        if self._pairs is None:  # classic tables: count the table once
            for pair, c in Counter(self._table).items():
                counts[pair >> bits] += c
        else:
            # The pair counts are sorted by value, so each owner's pairs are one run.
            values, numbers = self._pairs[0], self._pairs[1]
            totals = self._pairs[2] if len(self._pairs) > 2 else None
            owners = gone if totals is not None else range(len(slots))
            if totals is not None:
                counts = [0 if o in gone else c for o, c in enumerate(totals)]
            for o in owners:
                lo = bisect_left(values, o << bits)
                hi = bisect_left(values, (o + 1) << bits)
                if o not in gone:
                    counts[o] += sum(numbers[lo:hi])
                    continue
                for at in range(lo, hi):  # a departed owner's entries go to the runner-up
                    runner = values[at] & mask
                    if runner != mask and runner not in gone:
                        counts[runner] += numbers[at]
                    # else (inexact ring): they follow the forward walk; left out
        total = sum(counts[i] for i in self._live) or 1
        return {slots[i]: counts[i] / total for i in self._live}  # slots are in name order

    def without(self, names: frozenset[str] | set[str]) -> MaglevRing | None:
        """This ring minus ``names``, derived in O(1); None if it cannot be derived.

        The table is shared; lookups read the runner-up where the owner departed. Exact
        (identical to a rebuild by the rank-order rule) unless some entry's owner and
        runner-up have both departed since the table was built; then ``exact`` is False.
        """
        index = {name: i for i, name in enumerate(self._slots)}
        departed = {index[name] for name in names if name in index}
        if not departed:
            return self
        if self._pairs is None:
            return None  # classic tables keep no runner-up
        gone = self._gone | departed
        if len(gone) >= len(self._slots):
            return None
        exact = self.exact and self._overlap_free(gone, departed)
        return MaglevRing(
            self.family,
            self._slots,
            self._table,
            self._bits,
            self._pairs,
            gone=frozenset(gone),
            weights=self._weights,
            exact=exact,
            keep=self._keep,
        )

    def _overlap_free(self, gone: frozenset[int], departed: set[int]) -> bool:
        """True when no entry has both its owner and its runner-up in ``gone``.

        Read from the distinct (owner, runner-up) pairs, a sorted array: for each departed
        owner, the pairs with that owner are one contiguous run; for the runner-up side,
        each departed replica's pairs with a departed owner are looked up directly.
        """
        assert self._pairs is not None
        values = self._pairs[0]
        bits = self._bits
        for owner in gone:
            for runner in gone:
                if owner == runner or (owner not in departed and runner not in departed):
                    continue
                pair = (owner << bits) | runner
                at = bisect_left(values, pair)
                if at < len(values) and values[at] == pair:
                    return False
        # an unknown runner-up (the table's builder had no second replica) counts as gone
        for owner in departed:
            pair = (owner << bits) | self._mask
            at = bisect_left(values, pair)
            if at < len(values) and values[at] == pair:
                return False
        return True


def _restore(
    family: str,
    slots: tuple[str, ...],
    table: bytes,
    code: str,
    bits: int,
    pairs: tuple[bytes, ...] | None,
    state: tuple[frozenset[int], tuple[int, ...] | None, bool],
) -> MaglevRing:
    gone, weights, exact = state
    views = None if pairs is None else tuple(memoryview(p).cast("I") for p in pairs)
    view = memoryview(table).cast("H") if code == "H" else memoryview(table).cast("I")
    return MaglevRing(family, slots, view, bits, views, gone=gone, weights=weights, exact=exact)


@dataclass(frozen=True, slots=True)
class SharedMaglevRing:
    """A ``MaglevRing`` whose arrays wait in a shared-memory segment (what the worker sends).

    ``spans`` are (offset, length) of the table, then the pair values and their counts.
    """

    family: str
    slots: tuple[str, ...]
    code: str
    bits: int
    segment: str
    size: int
    spans: tuple[tuple[int, int], ...]
    state: tuple[frozenset[int], tuple[int, ...] | None, bool]

    def attach(self) -> MaglevRing:
        """The ring, its arrays used in place in the mapped segment (unlinked at once)."""
        mm = shared.attach(self.segment, self.size)
        whole = memoryview(mm)
        views = [whole[o : o + n] for o, n in self.spans]
        table = views[0].cast("H") if self.code == "H" else views[0].cast("I")
        pairs = None if len(views) == 1 else tuple(v.cast("I") for v in views[1:])
        gone, weights, exact = self.state
        return MaglevRing(
            self.family,
            self.slots,
            table,
            self.bits,
            pairs,
            gone=gone,
            weights=weights,
            exact=exact,
            keep=mm,
        )

    def discard(self) -> None:
        """Remove the segment unmapped (the ring is not wanted any more)."""
        shared.discard(self.segment)


class MaglevFamily:
    """Maglev tables of a prime size ``slots`` (default 4,194,287); ``vnodes`` does not apply."""

    #: Builds take 0.1-2 s in pure Python: the pool runs them in a worker process.
    offload = True
    #: ``build`` accepts per-replica weights.
    weighted = True

    def __init__(
        self, name: str = "maglev", *, slots: int | None = None, classic: bool = False
    ) -> None:
        default = CLASSIC_TABLE_SIZE if classic else DEFAULT_TABLE_SIZE
        m = default if slots is None else slots
        if not 2 <= m <= MAX_TABLE_SIZE:
            raise ValueError(f"{name}: slots must be between 2 and {MAX_TABLE_SIZE}, got {m}")
        if not is_prime(m):
            raise ValueError(
                f"{name}: the table size (slots) must be prime, got {m}; "
                f"the next prime is {_next_prime(m)}"
            )
        self.name = name
        self.slots = m
        self.classic = classic
        if classic:
            self.weighted = False

    #: Use numpy for the fill when it is installed (False: the pure-Python reference).
    vectorized = True

    def __repr__(self) -> str:
        rule = "classic" if self.classic else "rank"
        return f"<MaglevFamily {self.name!r} slots={self.slots} rule={rule}>"

    def check_placeable(self, count: int) -> None:
        """Raise ``RingFullError`` unless ``count`` replicas fit (one entry each at least)."""
        if count > self.slots:
            raise RingFullError(
                f"the {self.name} table has {self.slots} entries and cannot give each of "
                f"{count} replicas one; start with a larger prime --slots"
            )

    @property
    def state_key(self) -> tuple[str, int] | None:
        """What a kept build state (``build_with_state``) is valid for: the table size of
        the rank-order rule; None for the classic fill, which keeps none."""
        return None if self.classic else ("maglev-rank", self.slots)

    def validated(
        self, members: Mapping[str, int], weights: Mapping[str, int] | None
    ) -> tuple[list[str], tuple[int, ...]]:
        """The sorted names and their weights; raises on a table too small or a bad weight."""
        names = sorted(members)
        self.check_placeable(len(names))
        w = tuple(int((weights or {}).get(name, 1)) for name in names)
        if any(not 1 <= x <= MAX_WEIGHT for x in w):
            raise ValueError(f"weights must be integers from 1 to {MAX_WEIGHT}")
        if self.classic and any(x != 1 for x in w):
            raise ValueError(f"the {self.name} family does not take weights")
        return names, w

    def build_with_state(
        self,
        previous: Any,
        members: Mapping[str, int],
        weights: Mapping[str, int] | None = None,
    ) -> tuple[Ring, Any]:
        """``build``, derived from ``previous`` (the state an earlier call returned) when
        that is cheaper, and the state to pass next time (None where none is kept: the
        classic fill, the pure-Python reference). The build worker keeps it between builds
        (``lbproxy.ring.rankstate``); the table is identical to ``build``'s either way."""
        if self.classic or not self.vectorized or _numpy() is None or not members:
            return self.build(members, weights), None
        from lbproxy.ring import rankstate

        return rankstate.build(self, previous, members, weights)

    def build(self, members: Mapping[str, int], weights: Mapping[str, int] | None = None) -> Ring:
        if not members:
            return EmptyRing(self.name)
        m = self.slots
        names, w = self.validated(members, weights)
        n = len(names)
        offsets, skips, reals = permutations(m, names, w)
        bits = n.bit_length()  # 2**bits > n: the all-ones runner value means "none"
        code = "H" if 2 * bits <= 16 else "I"
        none = (1 << bits) - 1
        if self.classic:
            owner = _fill_classic(m, offsets, skips)
            table = array(code, [(o << bits) | none for o in owner])
            return MaglevRing(self.name, tuple(names), table, bits, None)
        weighted = w if any(x != 1 for x in w) else None
        if n == 1:
            table = array(code, [none]) * m
            pairs = (array("I", [none]), array("I", [m]), array("I", [m]))
            return MaglevRing(self.name, tuple(names), table, bits, pairs, weights=weighted)
        if _numpy() is None or not self.vectorized:
            owner, runner = _fill_rank(m, offsets, skips, reals)
            table = array(
                code,
                [(o << bits) | (r if r >= 0 else none) for o, r in zip(owner, runner, strict=True)],
            )
            counted = sorted(Counter(table).items())
            totals = array("I", bytes(4 * n))
            for p, c in counted:
                totals[p >> bits] += c
            pairs = (
                array("I", [p for p, _ in counted]),
                array("I", [c for _, c in counted]),
                totals,
            )
            return MaglevRing(self.name, tuple(names), table, bits, pairs, weights=weighted)
        owner_np, runner_np = _owners_runners(_fill_rank_numpy(m, offsets, skips, reals), reals)
        return pack_ring(self.name, tuple(names), owner_np, runner_np, weighted)


def permutations(
    m: int, names: list[str] | tuple[str, ...], weights: tuple[int, ...] | list[int]
) -> tuple[list[int], list[int], list[int]]:
    """(offsets, skips, replica index) of every permutation walked, in name order.

    A replica of weight w walks w permutations (seeds 2j, 2j + 1 for j < w): w "virtual
    replicas" competing for entries like unit replicas, all owned by it.
    """
    offsets: list[int] = []
    skips: list[int] = []
    reals: list[int] = []
    for r, (name, weight) in enumerate(zip(names, weights, strict=True)):
        data = encode(name)
        for j in range(weight):
            offsets.append(xxh3_64_intdigest(data, seed=2 * j) % m)
            skips.append(xxh3_64_intdigest(data, seed=2 * j + 1) % (m - 1) + 1)
            reals.append(r)
    return offsets, skips, reals


def pack_ring(
    family: str, names: tuple[str, ...], owner: Any, runner: Any, weights: tuple[int, ...] | None
) -> MaglevRing:
    """The ring over sorted ``names`` from every entry's owner and runner-up slot (numpy
    integer arrays; a runner-up of -1 or any value >= len(names) means none).

    The pair counts come from ``np.bincount`` over the packed values when their range
    (``2^(2 bits)``) is small enough to count directly (one pass); above that from a sort
    (``np.unique``, ~0.3 s at M = 4,194,287).
    """
    np = _numpy()
    n = len(names)
    bits = n.bit_length()  # 2**bits > n: the all-ones runner value means "none"
    none = (1 << bits) - 1
    code = "H" if 2 * bits <= 16 else "I"
    dtype = np.uint16 if code == "H" else np.uint32
    runner = np.asarray(runner)
    own = np.asarray(owner).astype(dtype)
    second = np.where((runner < 0) | (runner >= n), none, runner).astype(dtype)
    packed = (own << dtype(bits)) | second
    if 2 * bits <= _BINCOUNT_BITS:
        counted = np.bincount(packed, minlength=1 << (2 * bits))
        values = np.flatnonzero(counted)
        numbers = counted[values]
    else:
        values, numbers = np.unique(packed, return_counts=True)
    table = array(code, packed.tobytes())
    pairs = (
        array("I", values.astype(np.uint32).tobytes()),
        array("I", numbers.astype(np.uint32).tobytes()),
        array("I", np.bincount(own, minlength=n).astype(np.uint32).tobytes()),
    )
    return MaglevRing(family, names, table, bits, pairs, weights=weights)


#: Pair counts by ``np.bincount`` up to 2^this packed values (N < 2048), else by a sort.
_BINCOUNT_BITS = 22


def _owners_runners(priorities: tuple[Any, Any], reals: list[int]) -> tuple[Any, Any]:
    """Owner and runner-up slot of every entry from its two best priorities (rank*v + i)."""
    np = _numpy()
    best, second = priorities
    real = np.array(reals, dtype=np.int64)
    v = len(reals)
    return real[best % v], real[second % v]


@lru_cache(maxsize=1)
def _numpy() -> Any:
    """numpy if installed (it makes builds ~50x faster), else None: the fill is pure Python."""
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is a dependency; this is the fallback
        return None
    return numpy


def _exponent(m: int) -> int:
    """The smallest odd prime ``e`` prime to ``m - 1``: ``k -> k^e mod m`` permutes 0..m-1."""
    e = 3
    while math.gcd(e, m - 1) != 1:
        e = _next_prime(e + 2)
    return e


def _rank_order(m: int) -> array[int]:
    """``G(k) = k^e mod m`` for every rank ``k``: the rank-order permutation, as an array."""
    return array("I", map(pow, range(m), repeat(_exponent(m)), repeat(m)))


@lru_cache(maxsize=2)
def _rank_tables(m: int) -> tuple[array[int], array[int]]:
    """``G`` and its inverse (rank of each value); cached per table size and process."""
    np = _numpy()
    if np is None:
        g = _rank_order(m)
        inverse = array("I", bytes(4 * m))
        for k, value in enumerate(g):
            inverse[value] = k
        return g, inverse
    ks = np.arange(m, dtype=np.int64)
    gs = np.ones(m, dtype=np.int64)
    base = ks.copy()
    e = _exponent(m)
    while e:  # square and multiply; every product stays below m**2 < 2**63
        if e & 1:
            gs = gs * base % m
        e >>= 1
        if e:
            base = base * base % m
    inv = np.empty(m, dtype=np.int64)
    inv[gs] = ks
    return (
        array("I", gs.astype(np.uint32).tobytes()),
        array("I", inv.astype(np.uint32).tobytes()),
    )


def _fill_rank(
    m: int, offsets: list[int], skips: list[int], reals: list[int]
) -> tuple[list[int], list[int]]:
    """Owner and runner-up of every entry: the first two replicas to reach it (reference).

    ``offsets``/``skips`` describe the permutations walked (one per unit of weight) and
    ``reals`` the replica each belongs to. In round ``k`` every permutation, in order,
    visits its rank-``k`` entry; the first visitor's replica owns the entry and the first
    visitor of another replica is its runner-up. Walking costs one step per visit and the
    last entries are reached slowly (coupon collecting), so once fewer than ``m / v``
    entries lack a runner-up (``v`` permutations), those are settled directly: each
    permutation's rank of entry ``e`` is ``Ginv((e - offset) / skip)``, and the replicas
    with the two smallest (rank, permutation) win. Same answer as walking on.
    """
    v = len(offsets)
    n = max(reals) + 1
    owner = [-1] * m
    runner = [-1] * m
    if n == 1:
        return [0] * m, runner
    g, ginv = _rank_tables(m)
    need = m  # entries without a runner-up
    stop = m // v
    t = 0
    walkers = list(zip(offsets, skips, reals, strict=True))
    while need > stop and t < m:
        gk = g[t]
        t += 1
        for offset, skip, r in walkers:
            c = (offset + skip * gk) % m
            o = owner[c]
            if o < 0:
                owner[c] = r
            elif runner[c] < 0 and o != r:
                runner[c] = r
                need -= 1
    if need:
        params = [(o, pow(sk, -1, m), r) for o, sk, r in walkers]
        for e in range(m):
            if runner[e] >= 0:
                continue
            best = [1 << 62] * n
            for i, (o, inv, r) in enumerate(params):
                prio = ginv[(e - o) * inv % m] * v + i
                if prio < best[r]:
                    best[r] = prio
            first = min(best)
            at = best.index(first)
            best[at] = 1 << 62
            owner[e] = at
            runner[e] = best.index(min(best))
    return owner, runner


def _fill_classic(m: int, offsets: list[int], skips: list[int]) -> list[int]:
    """The Maglev paper's fill: in turn, each replica claims its next free entry."""
    n = len(offsets)
    owner = [-1] * m
    pos = list(offsets)
    filled = 0
    while True:
        for r in range(n):
            c = pos[r]
            s = skips[r]
            while owner[c] >= 0:
                c += s
                if c >= m:
                    c -= m
            owner[c] = r
            c += s
            if c >= m:
                c -= m
            pos[r] = c
            filled += 1
            if filled == m:
                return owner


#: Up to this many replicas, the numpy fill settles every entry directly instead of walking.
_DIRECT_MAX = 8


def _fill_rank_numpy(
    m: int, offsets: list[int], skips: list[int], reals: list[int]
) -> tuple[Any, Any]:
    """``_fill_rank`` with numpy, about 50x faster: every entry's two best priorities
    (``rank * v + permutation``; ``_owners_runners`` turns them into slots).

    Visits are processed a batch of whole rounds at a time; each visit's priority is
    ``round * v + permutation`` (smaller first), so an entry's owner is the visit with the
    smallest priority (``minimum.at``) and its runner-up the smallest among the visits of
    other replicas. Rounds are processed in order, so an owner found in one batch is final.
    The entries still short of a runner-up at the end are settled like in ``_fill_rank``.
    """
    np = _numpy()
    v = len(offsets)
    big = np.int64(1) << 62
    g = np.frombuffer(_rank_tables(m)[0], dtype=np.uint32).astype(np.int64)
    off = np.array(offsets, dtype=np.int64)
    skip = np.array(skips, dtype=np.int64)
    real = np.array(reals, dtype=np.int64)
    walker = np.arange(v, dtype=np.int64)
    best = np.full(m, big, dtype=np.int64)
    second = np.full(m, big, dtype=np.int64)
    batch = max(1, (1 << 20) // v)  # about a million visits a batch
    # Few permutations: settling every entry directly (v rank reads each) beats walking.
    stop = m if v <= _DIRECT_MAX else m // v
    t = 0
    need = m
    while need > stop and t < m:
        ranks = np.arange(t, min(t + batch, m), dtype=np.int64)
        entries = ((off[None, :] + skip[None, :] * g[ranks][:, None]) % m).ravel()
        prio = (ranks[:, None] * v + walker[None, :]).ravel()
        np.minimum.at(best, entries, prio)
        other = real[prio % v] != real[best[entries] % v]
        np.minimum.at(second, entries[other], prio[other])
        t += batch
        need = int(np.count_nonzero(second == big))
    if need:
        tail = np.flatnonzero(second == big) if need < m else None
        block = 1 << 20
        for lo in range(0, need, block):
            e = tail[lo : lo + block] if tail is not None else np.arange(lo, min(m, lo + block))
            best[e], second[e] = settle_numpy(m, offsets, skips, reals, e)
    return best, second


def settle_numpy(
    m: int, offsets: list[int], skips: list[int], reals: list[int], e: Any
) -> tuple[Any, Any]:
    """The two best priorities (``rank * v + permutation``, smaller first) at entries ``e``
    among the permutations given (``reals``: each one's replica, in name order, a replica's
    permutations adjacent): a permutation's rank of entry ``e`` is ``Ginv((e - offset) /
    skip)``, a replica's priority its best permutation's, and the second priority is the
    best of another replica (``1 << 62`` when there is none).
    """
    np = _numpy()
    v = len(offsets)
    big = np.int64(1) << 62
    ginv = np.frombuffer(_rank_tables(m)[1], dtype=np.uint32)
    first = np.full(len(e), big, dtype=np.int64)
    runner_up = np.full(len(e), big, dtype=np.int64)
    own = np.full(len(e), big, dtype=np.int64)
    last = -1
    for i in range(v):  # one permutation at a time over all the entries
        if reals[i] != last:
            if last >= 0:
                np.minimum(runner_up, np.maximum(first, own), out=runner_up)
                np.minimum(first, own, out=first)
            own[:] = big
            last = reals[i]
        inv = pow(skips[i], -1, m)
        # (e - offset) * inv mod m as e * inv + c, c = -offset * inv mod m: one mod, not two
        rank = ginv[(e * inv + (-offsets[i] * inv) % m) % m].astype(np.int64)
        np.minimum(own, rank * v + i, out=own)
    np.minimum(runner_up, np.maximum(first, own), out=runner_up)
    np.minimum(first, own, out=first)
    return first, runner_up
