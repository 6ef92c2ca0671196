"""Ketama-style ring on a 64-bit circle (``--hash hashring``).

Each replica puts ``vnodes`` points (default 160) on the circle of 64-bit integers, point
``v`` of replica ``name`` at ``xxh3_64(name, seed=v)``; a key sits at ``xxh3_64(key)`` and is
served by the first point clockwise (a point exactly at the key's position serves it). A
lookup is one hash and one ``bisect`` over the sorted points: O(log(N * vnodes)).

Adding a replica moves only the keys its new points capture, to it; removing one moves only
its own keys: exactly minimal disruption. Balance is the weak side: a replica's share is the
sum of ``vnodes`` random arcs, so it deviates from 1/N by about ``1/sqrt(vnodes)`` (8% at
160 points), and the moved fraction on a change is the changed replica's share, not exactly
1/N. Fallbacks are the next distinct replicas clockwise, which is exactly where the key goes
once its owner is removed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping

from lbproxy.ring._common import EmptyRing, encode, walk_distinct, xxh3_64_intdigest
from lbproxy.ring.base import Ring

__all__ = ["DEFAULT_VNODES", "MAX_VNODES", "HashRing", "HashRingFamily"]

DEFAULT_VNODES = 160
MAX_VNODES = 4096
_CIRCLE = 1 << 64


class HashRing:
    """A built ketama-style ring: sorted 64-bit points and the replica owning each."""

    __slots__ = ("_count", "_names", "_owners", "_points", "family")

    def __init__(self, family: str, points: list[tuple[int, str]]) -> None:
        self.family = family
        points.sort()
        self._points = [p for p, _ in points]
        # One extra owner so a key past the last point wraps to the first without a branch.
        self._owners = [name for _, name in points]
        self._owners.append(self._owners[0])
        self._names = frozenset(self._owners)
        self._count = len(self._names)

    def __repr__(self) -> str:
        return (
            f"<HashRing family={self.family!r} points={len(self._points)} replicas={self._count}>"
        )

    @property
    def names(self) -> frozenset[str]:
        return self._names

    def lookup(self, key: str) -> str:
        try:
            data = key.encode()
        except UnicodeEncodeError:
            data = key.encode("utf-8", "surrogatepass")
        return self._owners[bisect_left(self._points, xxh3_64_intdigest(data))]

    def candidates(self, key: str) -> Iterator[str]:
        index = bisect_left(self._points, xxh3_64_intdigest(encode(key)))
        if index == len(self._points):
            index = 0
        yield self._owners[index]
        yield from walk_distinct(self._owners, index, self._count, len(self._points))

    def shares(self) -> dict[str, float]:
        arcs = dict.fromkeys(sorted(self._names), 0)
        points = self._points
        previous = points[-1] - _CIRCLE
        for point, name in zip(points, self._owners, strict=False):
            arcs[name] += point - previous
            previous = point
        return {name: arc / _CIRCLE for name, arc in arcs.items()}


class HashRingFamily:
    """Ketama-style rings with ``vnodes`` points per replica; ``slots`` does not apply."""

    def __init__(self, name: str = "hashring", *, vnodes: int | None = None) -> None:
        v = DEFAULT_VNODES if vnodes is None else vnodes
        if not 1 <= v <= MAX_VNODES:
            raise ValueError(f"{name}: vnodes must be between 1 and {MAX_VNODES}, got {v}")
        self.name = name
        self.vnodes = v

    def __repr__(self) -> str:
        return f"<HashRingFamily {self.name!r} vnodes={self.vnodes}>"

    def build(self, members: Mapping[str, int]) -> Ring:
        if not members:
            return EmptyRing(self.name)
        points: list[tuple[int, str]] = []
        for name in members:
            data = encode(name)
            points.extend((xxh3_64_intdigest(data, seed=v), name) for v in range(self.vnodes))
        return HashRing(self.name, points)
