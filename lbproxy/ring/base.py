"""The contract every hash family honours, so the pool and proxy never care which one runs.

A ring is immutable: the pool builds a new one on every membership change and swaps the
reference, so lookups on the request path take no lock and never see a half-built ring.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol, runtime_checkable


@runtime_checkable
class Ring(Protocol):
    """A built, read-only mapping from keys to replica names."""

    @property
    def names(self) -> frozenset[str]:
        """The replica names on this ring."""
        ...

    def lookup(self, key: str) -> str:
        """The replica that owns ``key``. Raises ``EmptyRingError`` on an empty ring."""
        ...

    def candidates(self, key: str) -> Iterator[str]:
        """Distinct replicas in the order a request for ``key`` should try them.

        The first is ``lookup(key)``; the rest are the fallbacks used when it fails (for the
        slot-based rings, the next distinct replicas clockwise). Yields every replica once.
        """
        ...

    def shares(self) -> dict[str, float]:
        """Fraction of the key space each replica owns (sums to 1.0), for charts and checks."""
        ...


class RingFamily(Protocol):
    """Builds rings of one hash family from ``{replica name: ring id}``.

    The ring id is a small positive integer the pool assigns when a name first joins and
    keeps for that name while it stays in the pool (a replacement keeps its predecessor's
    id). Families that place replicas by name may ignore it; the seed family places by id.
    """

    name: str

    def build(self, members: Mapping[str, int]) -> Ring:
        """A ring over ``members``. Raises ``RingFullError`` when one cannot be placed."""
        ...
