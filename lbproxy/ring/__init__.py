"""Pluggable consistent-hash rings: pure functions of (members, key), no I/O, no asyncio.

``make_family(name, slots=..., vnodes=...)`` is the only constructor the rest of lbproxy
uses; each family lives in its own sibling module behind the ``RingFamily`` protocol:

==================  ==========================================================================
``maglev``          the default: Maglev lookup table (prime ``slots``; sized to the pool,
                    65537 to 4194287) filled in rank order, exactly minimal disruption, O(1)
``maglev-classic``  the Maglev paper's fill: tighter table balance, a little extra churn
``hashring``        ketama-style ring of ``vnodes`` xxh3 points per replica (default 160)
``rendezvous``      highest random weight: ideal spread and churn, O(N) per lookup
``seed``            the assignment's reference ring, bit-exact (``slots`` 512, ``vnodes`` 9)
``seed-alt``        the reference ``H`` with a well-spread virtual-node hash ``Phi'``
``seed-2024``       the 2024 assignment text's ``H`` and ``Phi`` (``slots`` 512, ``vnodes`` 9)
==================  ==========================================================================

See docs/ring.md for the measurements behind the default.
"""

from __future__ import annotations

from lbproxy.ring.base import Ring, RingFamily
from lbproxy.ring.hashring import HashRingFamily
from lbproxy.ring.maglev import MaglevFamily, table_size_for
from lbproxy.ring.rendezvous import RendezvousFamily
from lbproxy.ring.seed import SeedFamily, seed_2024_family, seed_alt_family

__all__ = ["DEFAULT_FAMILY", "FAMILY_NAMES", "Ring", "RingFamily", "make_family"]

DEFAULT_FAMILY = "maglev"
FAMILY_NAMES: tuple[str, ...] = (
    "maglev",
    "maglev-classic",
    "hashring",
    "rendezvous",
    "seed",
    "seed-alt",
    "seed-2024",
)


def make_family(
    name: str,
    *,
    slots: int | None = None,
    vnodes: int | None = None,
    probe: str = "quadratic",
    pool_size: int | None = None,
) -> RingFamily:
    """A ring family by name; ``slots``/``vnodes`` override its defaults where it has them.

    ``pool_size`` (the pool's declared size) sizes Maglev's table when ``slots`` is unset
    (``table_size_for``: the smallest of its sizes with ~4,096 entries a replica); without
    it the table is the largest, 4,194,287.

    Families without a table or circle size ignore ``slots``; families without virtual
    nodes ignore ``vnodes``; only the seed families probe (``probe``: quadratic or linear).
    Raises ``ValueError`` for an unknown name or a bad size.
    """
    if name == "maglev":
        if slots is None and pool_size is not None:
            slots = table_size_for(pool_size)
        return MaglevFamily("maglev", slots=slots)
    if name == "maglev-classic":
        return MaglevFamily("maglev-classic", slots=slots, classic=True)
    if name == "hashring":
        return HashRingFamily("hashring", vnodes=vnodes)
    if name == "rendezvous":
        return RendezvousFamily("rendezvous")
    if name == "seed":
        return SeedFamily("seed", slots=slots, vnodes=vnodes, probe=probe)
    if name == "seed-alt":
        return seed_alt_family(slots=slots, vnodes=vnodes, probe=probe)
    if name == "seed-2024":
        return seed_2024_family(slots=slots, vnodes=vnodes, probe=probe)
    raise ValueError(f"unknown hash family {name!r}; known families: {', '.join(FAMILY_NAMES)}")
