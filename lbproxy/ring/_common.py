"""Helpers shared by the ring families: key hashing, the empty ring, clockwise walks.

Every family hashes with xxHash3 (64-bit) and fixed seeds, never Python's ``hash()``, so a
ring built from the same members maps every key the same way in every process.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from xxhash import xxh3_64_intdigest

from lbproxy.errors import EmptyRingError

__all__ = ["EmptyRing", "encode", "walk_distinct", "xxh3_64_intdigest"]


def encode(text: str) -> bytes:
    """UTF-8 bytes of ``text``; lone surrogates (undecodable header bytes) never raise."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def walk_distinct(
    owners: Sequence[str], start: int, count: int, size: int | None = None
) -> Iterator[str]:
    """Distinct names of ``owners[:size]`` read circularly from ``start``, until ``count``.

    The caller has already yielded ``owners[start]``; this yields the rest (clockwise
    fallbacks) and stops as soon as all ``count`` distinct names have appeared.
    """
    seen = {owners[start]}
    if len(seen) >= count:
        return
    if size is None:
        size = len(owners)
    index = start
    for _ in range(size - 1):
        index += 1
        if index == size:
            index = 0
        name = owners[index]
        if name not in seen:
            seen.add(name)
            yield name
            if len(seen) >= count:
                return


class EmptyRing:
    """The ring over no replica: every lookup raises ``EmptyRingError``."""

    __slots__ = ("_family",)

    def __init__(self, family: str) -> None:
        self._family = family

    def __repr__(self) -> str:
        return f"<EmptyRing family={self._family!r}>"

    @property
    def names(self) -> frozenset[str]:
        return frozenset()

    def lookup(self, key: str) -> str:
        raise EmptyRingError(
            f"no replica on the {self._family} ring to serve key {key!r}: the pool is empty"
        )

    def candidates(self, key: str) -> Iterator[str]:
        """Raises ``EmptyRingError`` on the first ``next()``, like ``lookup``."""
        yield self.lookup(key)

    def shares(self) -> dict[str, float]:
        return {}
