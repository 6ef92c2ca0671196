"""Where the seed-style families put their virtual nodes: the *explanation* of A-4.

Nothing here is a measurement. The request counts in the report all come from real
balancers over HTTP; this module only lays out, from the formulas in
``lbproxy/ring/seed.py``, the circle those counts come from, so the report can show why
the reference ``Phi`` piles the load on one replica. The report checks that the shares
derived here equal the shares the running balancers reported in ``/lbproxy/status``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lbproxy.ring import make_family
from lbproxy.ring.seed import ALT_PHI_COEFFS, SeedFamily, SeedRing, spec_h, spec_phi

SEED_FAMILIES = ("seed", "seed-alt")


@dataclass(frozen=True)
class Circle:
    family: str
    slots: int
    vnodes: int
    placements: dict[str, tuple[int, ...]]  # replica -> its virtual-node slots, j order
    owner: list[str]  # slot -> the replica whose virtual node is first clockwise from it

    def shares(self) -> dict[str, float]:
        return {name: self.owner.count(name) / self.slots for name in self.placements}

    def arcs(self) -> list[tuple[int, int, str]]:
        """(first slot, length, owner) of each arc that ends at a virtual node."""
        marks = sorted((s, n) for n, slots in self.placements.items() for s in slots)
        out = []
        for k, (slot, name) in enumerate(marks):
            prev = marks[k - 1][0]
            length = (slot - prev) % self.slots or self.slots
            out.append(((prev + 1) % self.slots, length, name))
        return out


def circle(family: str, names: list[str]) -> Circle:
    """The circle ``family`` builds for replicas ``names`` with ring ids 1, 2, ... in order."""
    fam = make_family(family)
    ring = fam.build({name: k + 1 for k, name in enumerate(names)})
    if not isinstance(ring, SeedRing):
        raise ValueError(f"{family} is not a seed-style family")
    placements = ring.placements
    marks = sorted((s, n) for n, slots in placements.items() for s in slots)
    owner: list[str] = []
    k = 0
    for slot in range(ring.slots):
        while k < len(marks) and marks[k][0] < slot:
            k += 1
        owner.append(marks[k][1] if k < len(marks) else marks[0][1])
    return Circle(family, ring.slots, len(next(iter(placements.values()))), placements, owner)


def phi_offsets(slots: int = 512, vnodes: int = 9) -> list[int]:
    """``Phi(0, j) mod M``: the slots every replica's comb is built on, before its ``+i``."""
    return [spec_phi(0, j) % slots for j in range(vnodes)]


def h_residues(slots: int = 512, start: int = 100000) -> int:
    """How many distinct slots ``H`` reaches over ``slots`` consecutive ids from ``start``."""
    return len({spec_h(i) % slots for i in range(start, start + slots)})


def alt_formula() -> str:
    a, b, c = ALT_PHI_COEFFS
    return f"Phi'(i, j) = ({a}*i + {b}*j + {c}) mod 512"


#: The assignment's ring variants compared by ``variant_table``: both texts' (H, Phi)
#: pairs and ``seed-alt``, each with quadratic and linear probing.
VARIANTS = tuple(
    (family, probe)
    for family in ("seed", "seed-2024", "seed-alt")
    for probe in ("quadratic", "linear")
)


@dataclass(frozen=True)
class VariantRow:
    family: str
    probe: str
    #: N -> (max/mean of per-replica request counts, busiest replica's fraction)
    spread: dict[int, tuple[float, float]]
    h_slots: int  # distinct slots H reaches (512 when H is a bijection mod 512)
    capacity: int  # largest N whose virtual nodes all find a slot


def variant_table(
    ns: tuple[int, ...] = (2, 3, 4, 5, 6, 10, 20, 39), requests: int = 10000, seed: int = 42
) -> list[VariantRow]:
    """Route ``requests`` random 6-digit ids (``lbproxy loadtest``'s, same seed) through
    each variant's ring at each N (39: the largest N every variant can hold).

    A derivation, not a measurement over HTTP: it is the same ring lookup the balancer
    makes (``--hash F --probe P``), so a balancer given the same ids answers the same
    counts; the A-1/A-2 measurements above check that for ``seed`` and ``seed-alt``.
    """
    from lbproxy.errors import RingFullError
    from lbproxy_tools.loadtest import make_ids

    ids = make_ids("random", requests, seed)
    rows = []
    for family, probe in VARIANTS:
        fam = make_family(family, probe=probe)
        spread: dict[int, tuple[float, float]] = {}
        for n in ns:
            ring = fam.build({f"S{k}": k for k in range(1, n + 1)})
            counts: dict[str, int] = dict.fromkeys(ring.names, 0)
            for key in ids:
                counts[ring.lookup(key)] += 1
            busiest = max(counts.values())
            spread[n] = (busiest / (requests / n), busiest / requests)
        capacity = 0
        while True:
            try:
                fam.build({f"S{k}": k for k in range(1, capacity + 2)})
            except RingFullError:
                break
            capacity += 1
        assert isinstance(fam, SeedFamily)
        h_slots = len({fam.h(i) % fam.slots for i in range(fam.slots)})
        rows.append(VariantRow(family, probe, spread, h_slots, capacity))
    return rows


def variant_markdown(rows: list[VariantRow]) -> str:
    """``variant_table`` as a Markdown table: busiest / mean (busiest's share) per N."""
    ns = sorted(rows[0].spread)
    head = "| family | probe | H reaches | fits up to N | " + " | ".join(f"N={n}" for n in ns)
    lines = [head + " |", "|---|---|---:|---:|" + "---:|" * len(ns)]
    for r in rows:
        cells = " | ".join(f"{r.spread[n][0]:.2f} ({r.spread[n][1]:.0%})" for n in ns)
        lines.append(f"| `{r.family}` | {r.probe} | {r.h_slots} slots | {r.capacity} | {cells} |")
    return "\n".join(lines)
