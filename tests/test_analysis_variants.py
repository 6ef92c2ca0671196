"""A-4's comparison of the assignment's ring variants (both texts, both probings)."""

from __future__ import annotations

import pytest

from lbproxy.ring import make_family
from lbproxy_tools.analysis import geometry
from lbproxy_tools.loadtest import make_ids

pytestmark = pytest.mark.unit


def test_every_variant_is_compared_and_rows_follow_the_rings() -> None:
    rows = geometry.variant_table(ns=(3, 39), requests=2000, seed=7)
    assert [(r.family, r.probe) for r in rows] == list(geometry.VARIANTS)
    by = {(r.family, r.probe): r for r in rows}
    assert by[("seed-2024", "quadratic")].h_slots == 87
    assert by[("seed", "quadratic")].h_slots == 512
    assert by[("seed-2024", "quadratic")].capacity == 39
    assert by[("seed-2024", "linear")].capacity == 56
    # Each cell is what the ring itself routes: recount one independently.
    ring = make_family("seed-2024", probe="linear").build({f"S{k}": k for k in (1, 2, 3)})
    ids = make_ids("random", 2000, 7)
    busiest = max(sum(ring.lookup(i) == name for i in ids) for name in ring.names)
    assert by[("seed-2024", "linear")].spread[3] == (busiest / (2000 / 3), busiest / 2000)


def test_markdown_has_one_row_per_variant() -> None:
    table = geometry.variant_markdown(geometry.variant_table(ns=(2,), requests=300))
    assert table.count("\n") == 1 + len(geometry.VARIANTS)
    assert "| `seed-2024` | linear | 87 slots | 56 |" in table
