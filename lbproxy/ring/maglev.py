"""Maglev-style lookup tables (the default family, ``--hash maglev``).

A key's entry is ``xxh3_64(key) mod M`` in a table of ``M`` entries (a prime, 65537 by
default); the entry names the replica. A lookup is one hash and one list read.

Every replica walks its own permutation of the table, derived from
``offset = xxh3_64(name, seed=0) mod M`` and ``skip = xxh3_64(name, seed=1) mod (M - 1) + 1``:
placement depends on replica NAMES, not on ring ids, and replicas are visited in sorted
name order, so the table is a deterministic function of the set of names.

Two tie rules fill the table:

``maglev`` (the default): **rank order**. Replica ``r`` reaches entry
``(offset_r + skip_r * G[k]) mod M`` at rank ``k``, where ``G`` is one fixed pseudo-random
permutation of ``0..M-1`` (the integers in xxh3 order). Entry ``e`` belongs to the replica
that reaches it at the smallest rank (equal ranks go to the name that sorts first). That
owner is a pure function of ``e`` and the member set, so adding a replica moves only the
entries it wins, to it, and removing one moves only its own entries: exactly minimal
disruption, nothing moves between the replicas that stay. The price is a little table
imbalance: max/mean share 1.0002 at N = 3, 1.05 at N = 100, 1.27 at N = 1000 (about 65
entries each) with M = 65537, still far inside the noise of an ideal random assignment of
keys. (``G`` matters: with the paper's ``offset + k*skip`` ranks, two replicas' ranks are
tied by a fixed affine map, and for some pairs of names that lattice skews their shares by
up to 0.85% of the key space; through ``G``, over 620 random sets of 2 to 10 names, no
share was more than 0.37% of the key space above 1/N.)

``maglev-classic`` (the paper's rule, ranks ``offset + k*skip``): replicas take turns and
each claims the *next free* entry of its permutation. Shares differ by at most one entry,
but a change shifts whose turn reaches which entry, so some keys also move between
replicas that stayed. Measured over the
whole table with M = 65537: about 0.1% of keys with fewer than 10 replicas (up to ~0.8% for
unlucky names), 0.3% at N = 10, 0.6% at N = 100 and at N = 1000, where a change moves
0.68% of keys against the ideal 0.1%. It grows as M/N shrinks (1.8% at M = 4099, N = 3).

Fallbacks (``candidates``): the owner, then (rank-order tables) the runner-up, which is
exactly the replica that will own the key once the owner is removed, so retries land where
the key is going anyway; then the other replicas in the order they appear walking the table
forward from the key's entry. A build walks the permutations until every entry has an
owner and a runner-up: about 0.2M steps at N = 3 up to ~1.1M at N = 1000 for M = 65537,
i.e. 20-35 ms at N = 3 and ~80-130 ms at N = 100..1000 in pure Python, plus ~30 ms once
per process to compute ``G``. Memory: two lists of ``M`` references and ``G`` (~3 MB).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from functools import lru_cache

from lbproxy.errors import RingFullError
from lbproxy.ring._common import EmptyRing, encode, xxh3_64_intdigest
from lbproxy.ring.base import Ring

__all__ = ["DEFAULT_TABLE_SIZE", "MAX_TABLE_SIZE", "MaglevFamily", "MaglevRing", "is_prime"]

#: The default table size: prime, ~65 entries per replica at 1000 replicas.
DEFAULT_TABLE_SIZE = 65537
#: Bigger tables cost memory (8 bytes an entry, two tables) and build time (~M ln M).
MAX_TABLE_SIZE = 1 << 22


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


def _next_prime(n: int) -> int:
    while not is_prime(n):
        n += 1
    return n


class MaglevRing:
    """A built Maglev table: ``table[xxh3_64(key) % M]`` is the key's replica."""

    __slots__ = ("_count", "_m", "_names", "_runner", "_sorted", "_table", "family")

    def __init__(
        self,
        family: str,
        names: list[str],
        table: list[str],
        runner: list[str] | None,
    ) -> None:
        self.family = family
        self._sorted = tuple(names)
        self._names = frozenset(names)
        self._count = len(names)
        self._table = table
        self._runner = runner
        self._m = len(table)

    def __repr__(self) -> str:
        return f"<MaglevRing family={self.family!r} M={self._m} replicas={self._count}>"

    @property
    def names(self) -> frozenset[str]:
        return self._names

    @property
    def table(self) -> tuple[str, ...]:
        """A copy of the lookup table (entry ``e`` serves keys with ``xxh3_64 % M == e``)."""
        return tuple(self._table)

    def entry_of(self, key: str) -> int:
        """The table entry a key hashes to."""
        return xxh3_64_intdigest(encode(key)) % self._m

    def lookup(self, key: str) -> str:
        try:
            data = key.encode()
        except UnicodeEncodeError:
            data = key.encode("utf-8", "surrogatepass")
        return self._table[xxh3_64_intdigest(data) % self._m]

    def candidates(self, key: str) -> Iterator[str]:
        entry = xxh3_64_intdigest(encode(key)) % self._m
        table = self._table
        first = table[entry]
        yield first
        count = self._count
        if count == 1:
            return
        seen = {first}
        if self._runner is not None:
            second = self._runner[entry]
            seen.add(second)
            yield second
            if count == 2:
                return
        size = self._m
        index = entry
        for _ in range(size - 1):
            index += 1
            if index == size:
                index = 0
            name = table[index]
            if name not in seen:
                seen.add(name)
                yield name
                if len(seen) == count:
                    return
        # Only when some replica won no entry at all (N close to M): the rest, by name.
        for name in self._sorted:
            if name not in seen:
                seen.add(name)
                yield name

    def shares(self) -> dict[str, float]:
        counts = Counter(self._table)
        return {name: counts[name] / self._m for name in self._sorted}


class MaglevFamily:
    """Maglev tables of a prime size ``slots`` (default 65537); ``vnodes`` does not apply."""

    def __init__(
        self, name: str = "maglev", *, slots: int | None = None, classic: bool = False
    ) -> None:
        m = DEFAULT_TABLE_SIZE if slots is None else slots
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

    def __repr__(self) -> str:
        rule = "classic" if self.classic else "rank"
        return f"<MaglevFamily {self.name!r} slots={self.slots} rule={rule}>"

    def build(self, members: Mapping[str, int]) -> Ring:
        if not members:
            return EmptyRing(self.name)
        m = self.slots
        names = sorted(members)
        if len(names) > m:
            raise RingFullError(
                f"the {self.name} table has {m} entries and cannot give each of "
                f"{len(names)} replicas one; start with a larger prime --slots"
            )
        offsets: list[int] = []
        skips: list[int] = []
        for name in names:
            data = encode(name)
            offsets.append(xxh3_64_intdigest(data, seed=0) % m)
            skips.append(xxh3_64_intdigest(data, seed=1) % (m - 1) + 1)
        if self.classic:
            owner = _fill_classic(m, offsets, skips)
            return MaglevRing(self.name, names, [names[o] for o in owner], None)
        owner, runner = _fill_rank(m, offsets, skips)
        table = [names[o] for o in owner]
        second = [names[r] for r in runner] if len(names) > 1 else None
        return MaglevRing(self.name, names, table, second)


@lru_cache(maxsize=4)
def _rank_order(m: int) -> tuple[int, ...]:
    """A fixed pseudo-random permutation ``G`` of ``0..m-1`` (xxh3 order of the integers).

    Replica ``r`` visits entry ``(offset_r + skip_r * G[k]) mod m`` at rank ``k``. Without
    ``G`` (plain ``offset + k*skip``) two replicas' ranks are linked by a fixed affine map,
    and for some pairs of names that lattice skews their shares by up to 0.85% of the key
    space; through ``G`` the shares vary like counts of a random ordering (about 0.1% at
    N = 2 for m = 65537). Computed once per table size and process (~40 ms for 65537).
    """
    return tuple(sorted(range(m), key=lambda k: xxh3_64_intdigest(k.to_bytes(8, "little"))))


def _fill_rank(m: int, offsets: list[int], skips: list[int]) -> tuple[list[int], list[int]]:
    """Owner and runner-up of every entry: the first and second replica to reach it.

    In round ``k`` every replica, in sorted name order, visits its rank-``k`` entry, so the
    first visitor of an entry is the replica with the smallest (rank, name), the second the
    next one. Each permutation visits every entry once in ``m`` rounds, so both phases end
    within ``m`` rounds in total.
    """
    n = len(offsets)
    owner = [-1] * m
    runner = [-1] * m
    order = _rank_order(m)
    replicas = list(enumerate(zip(offsets, skips, strict=True)))
    left = m
    k = 0
    while left:  # phase 1: until every entry has an owner (runner-ups noted on the way)
        g = order[k]
        k += 1
        for r, (offset, skip) in replicas:
            c = (offset + skip * g) % m
            if owner[c] < 0:
                owner[c] = r
                left -= 1
            elif runner[c] < 0:
                runner[c] = r
    if n < 2:
        return owner, runner
    left = runner.count(-1)
    while left:  # phase 2: until every entry also has a runner-up
        g = order[k]
        k += 1
        for r, (offset, skip) in replicas:
            c = (offset + skip * g) % m
            if runner[c] < 0 and owner[c] != r:
                runner[c] = r
                left -= 1
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
