"""Pluggable consistent-hash rings: pure functions of (members, key), no I/O, no asyncio.

``make_family(name, slots=..., vnodes=...)`` is the only constructor the rest of lbproxy
uses; each family lives in its own sibling module behind the ``RingFamily`` protocol.
"""

from __future__ import annotations

from lbproxy.ring.base import Ring, RingFamily

__all__ = ["DEFAULT_FAMILY", "FAMILY_NAMES", "Ring", "RingFamily", "make_family"]

# Filled in by the family modules (see registry below); the helper owning lbproxy/ring/
# replaces this stub with the real registry.
DEFAULT_FAMILY = "maglev"
FAMILY_NAMES: tuple[str, ...] = ()


def make_family(name: str, *, slots: int | None = None, vnodes: int | None = None) -> RingFamily:
    """A ring family by name; ``slots``/``vnodes`` override its defaults where it has them."""
    raise NotImplementedError(name)
