"""Ketama-style ring on a 64-bit circle (``--hash hashring``).

Each replica puts ``vnodes`` points (default 160) on the circle of 64-bit integers, point
``v`` of replica ``name`` at ``xxh3_64(name, seed=v)``; a key sits at ``xxh3_64(key)`` and is
served by the first point clockwise (a point exactly at the key's position serves it). A
lookup is one hash and one ``bisect`` over the sorted points: O(log(N * vnodes)).

Adding a replica moves only the keys its new points capture, to it; removing one moves only
its own keys: exactly minimal disruption. A removal is derived without a build
(``HashRing.without``): the ring keeps its points and notes the departed replicas, and a key
whose point belongs to one walks on to the next live point, exactly where a rebuilt ring
would send it. A replica of weight ``w`` has ``w * vnodes`` points (its first ``vnodes`` are
the unweighted ones), so changing one weight moves keys only to or from that replica.

Balance is the weak side: a replica's share is the sum of ``vnodes`` random arcs, so it
deviates from 1/N by about ``1/sqrt(vnodes)`` (8% at 160 points), and the moved fraction on
a change is the changed replica's share, not exactly 1/N. Fallbacks are the next distinct
replicas clockwise, which is exactly where the key goes once its owner is removed.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterator, Mapping

from lbproxy.ring._common import EmptyRing, encode, xxh3_64_intdigest
from lbproxy.ring.base import Ring

__all__ = ["DEFAULT_VNODES", "MAX_VNODES", "MAX_WEIGHT", "HashRing", "HashRingFamily"]

DEFAULT_VNODES = 160
MAX_VNODES = 4096
#: Largest weight a replica can have.
MAX_WEIGHT = 100
_CIRCLE = 1 << 64


class HashRing:
    """A built ketama-style ring: sorted 64-bit points and the replica owning each.

    Points and owners are arrays (compact, and cheap to pass from the build worker);
    ``_gone`` lists the slot indices of replicas removed since the build.
    """

    __slots__ = (
        "_count",
        "_gone",
        "_names",
        "_owners",
        "_points",
        "_shares",
        "_slots",
        "family",
    )

    def __init__(
        self,
        family: str,
        slots: tuple[str, ...],
        points: array[int],
        owners: array[int],
        gone: frozenset[int] = frozenset(),
    ) -> None:
        self.family = family
        self._slots = slots
        self._points = points
        # One extra owner so a key past the last point wraps to the first without a branch.
        self._owners = owners
        self._gone = gone
        self._names = frozenset(n for i, n in enumerate(slots) if i not in gone)
        self._count = len(self._names)
        self._shares: dict[str, float] | None = None

    @classmethod
    def of(cls, family: str, points: list[tuple[int, str]]) -> HashRing:
        """A ring from ``(point, name)`` pairs, in any order."""
        points.sort()
        slots = tuple(sorted({name for _, name in points}))
        index = {name: i for i, name in enumerate(slots)}
        owners = array("H", [index[name] for _, name in points])
        owners.append(owners[0])
        return cls(family, slots, array("Q", [p for p, _ in points]), owners)

    def __repr__(self) -> str:
        return (
            f"<HashRing family={self.family!r} points={len(self._points)} replicas={self._count}>"
        )

    @property
    def names(self) -> frozenset[str]:
        return self._names

    def _live_from(self, index: int) -> int:
        """The first point at or after ``index`` (wrapping) whose owner has not left."""
        owners, gone, size = self._owners, self._gone, len(self._points)
        for _ in range(size):
            if owners[index] not in gone:
                return index
            index += 1
            if index >= size:
                index = 0
        raise AssertionError("a HashRing with no live replica")  # pragma: no cover

    def lookup(self, key: str) -> str:
        try:
            data = key.encode()
        except UnicodeEncodeError:
            data = key.encode("utf-8", "surrogatepass")
        index = bisect_left(self._points, xxh3_64_intdigest(data))
        owner = self._owners[index]
        if self._gone and owner in self._gone:
            owner = self._owners[self._live_from(index % len(self._points))]
        return self._slots[owner]

    def candidates(self, key: str) -> Iterator[str]:
        index = bisect_left(self._points, xxh3_64_intdigest(encode(key)))
        if index == len(self._points):
            index = 0
        index = self._live_from(index)
        slots, owners, gone = self._slots, self._owners, self._gone
        first = owners[index]
        yield slots[first]
        seen = {first}
        size = len(self._points)
        for _ in range(size - 1):
            if len(seen) >= self._count:
                return
            index += 1
            if index == size:
                index = 0
            owner = owners[index]
            if owner not in seen and owner not in gone:
                seen.add(owner)
                yield slots[owner]

    def shares(self) -> dict[str, float]:
        """Each replica's arc of the circle; computed once per ring (rings are immutable)."""
        if self._shares is None:
            arcs = [0] * len(self._slots)
            points, owners, gone = self._points, self._owners, self._gone
            # A departed replica's arcs go to the next live point clockwise.
            live = [0] * len(points)
            nxt = -1
            for i in range(2 * len(points) - 1, -1, -1):
                j = i % len(points)
                if owners[j] not in gone:
                    nxt = owners[j]
                if i < len(points):
                    live[j] = nxt
            previous = points[-1] - _CIRCLE
            for point, owner in zip(points, live, strict=False):
                arcs[owner] += point - previous
                previous = point
            self._shares = {
                self._slots[i]: arcs[i] / _CIRCLE for i in range(len(self._slots)) if i not in gone
            }
        return dict(self._shares)

    def without(self, names: frozenset[str] | set[str]) -> HashRing | None:
        """This ring minus ``names``, without a build: identical to a rebuild (see module)."""
        departed = {i for i, name in enumerate(self._slots) if name in names}
        if not departed:
            return self
        gone = self._gone | departed
        if len(gone) >= len(self._slots):
            return None
        return HashRing(self.family, self._slots, self._points, self._owners, frozenset(gone))


class HashRingFamily:
    """Ketama-style rings with ``vnodes`` points per replica; ``slots`` does not apply."""

    #: Builds of N * vnodes points take ~0.1 s at N = 1000: the pool runs them off the loop.
    offload = True
    #: ``build`` accepts per-replica weights (``weight * vnodes`` points).
    weighted = True

    def __init__(self, name: str = "hashring", *, vnodes: int | None = None) -> None:
        v = DEFAULT_VNODES if vnodes is None else vnodes
        if not 1 <= v <= MAX_VNODES:
            raise ValueError(f"{name}: vnodes must be between 1 and {MAX_VNODES}, got {v}")
        self.name = name
        self.vnodes = v

    def __repr__(self) -> str:
        return f"<HashRingFamily {self.name!r} vnodes={self.vnodes}>"

    def check_placeable(self, count: int) -> None:
        """Any number of replicas fits on the circle."""

    def build(self, members: Mapping[str, int], weights: Mapping[str, int] | None = None) -> Ring:
        if not members:
            return EmptyRing(self.name)
        points: list[tuple[int, str]] = []
        for name in members:
            data = encode(name)
            weight = int((weights or {}).get(name, 1))
            if not 1 <= weight <= MAX_WEIGHT:
                raise ValueError(f"weights must be integers from 1 to {MAX_WEIGHT}")
            count = self.vnodes * weight
            points.extend((xxh3_64_intdigest(data, seed=v), name) for v in range(count))
        return HashRing.of(self.name, points)
