"""Removals derived from the ring in use equal a rebuild; weights; numpy fill == reference.

Issue 10: a removal must not build a table on the event loop. Maglev keeps each entry's
runner-up, which by the rank-order rule is exactly the entry's owner once its owner leaves,
so ``MaglevRing.without`` is a rebuild's equal (``exact``) unless two departed replicas were
each other's runner-up somewhere; the ketama-style ring drops the departed points, so a key
walks on to the next live point, as in a rebuild. Issue 11: weights move keys only to or
from the replica whose weight changed, and shares follow the weights.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbproxy.ring import make_family
from lbproxy.ring.hashring import HashRing, HashRingFamily
from lbproxy.ring.maglev import MaglevFamily, MaglevRing

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
names = st.lists(
    st.one_of(st.integers(1, 60).map(lambda i: f"Server {i}"), st.text(min_size=1, max_size=10)),
    min_size=2,
    max_size=9,
    unique=True,
)
weights = st.integers(1, 4)
_rng = random.Random(11)
KEYS = [str(_rng.randrange(100_000, 1_000_000)) for _ in range(3000)]


def named_owners(ring: MaglevRing) -> np.ndarray:
    """Every entry's owner as an index into the sorted union of names (comparable rings)."""
    slots = np.array(ring.slots, dtype=object)
    return slots[ring.owners()]


def same_table(a: MaglevRing, b: MaglevRing) -> bool:
    return bool((named_owners(a) == named_owners(b)).all())


@SETTINGS
@given(members=names, data=st.data())
def test_maglev_removal_derived_equals_rebuild(members: list[str], data: st.DataObject) -> None:
    family = MaglevFamily(slots=4099)
    w = {n: data.draw(weights) for n in members} if data.draw(st.booleans()) else None
    ids = {n: i for i, n in enumerate(members, 1)}
    ring = family.build(ids, w)
    assert isinstance(ring, MaglevRing)
    # one or more removals, one at a time (a chain of derivations) or in one batch
    gone = data.draw(
        st.lists(st.sampled_from(members), min_size=1, max_size=len(members) - 1, unique=True)
    )
    derived: MaglevRing | None = ring
    if data.draw(st.booleans()):
        derived = ring.without(set(gone))
    else:
        for name in gone:
            assert derived is not None
            derived = derived.without({name})
    assert derived is not None
    rest = {n: i for n, i in ids.items() if n not in gone}
    rebuilt = family.build(rest, {n: w[n] for n in rest} if w else None)
    assert isinstance(rebuilt, MaglevRing)
    assert derived.names == rebuilt.names
    if derived.exact:
        assert same_table(derived, rebuilt)
        assert derived.shares() == pytest.approx(rebuilt.shares())
        for key in KEYS[:300]:
            assert derived.lookup(key) == rebuilt.lookup(key)
    # exact or not, every key goes to a live replica and candidates list each once
    for key in KEYS[:100]:
        assert derived.lookup(key) in rebuilt.names
        assert sorted(derived.candidates(key)) == sorted(rebuilt.names)


@pytest.mark.slow  # every single removal at the default table size: ~15 s
def test_single_removal_is_always_exact_at_the_default_size() -> None:
    """The default table, the case that matters: one death or ejection at a time."""
    family = make_family("maglev")
    members = {f"replica-{i}": i for i in range(1, 8)}
    ring = family.build(members)
    assert isinstance(ring, MaglevRing)
    for victim in ("replica-1", "replica-5"):
        derived = ring.without({victim})
        rebuilt = family.build({n: i for n, i in members.items() if n != victim})
        assert derived is not None and derived.exact
        assert isinstance(rebuilt, MaglevRing)
        assert same_table(derived, rebuilt)
        assert derived.shares() == pytest.approx(rebuilt.shares())


def test_departed_runner_ups_make_a_ring_inexact_and_it_still_serves() -> None:
    family = MaglevFamily(slots=101)
    ring = family.build({"a": 1, "b": 2, "c": 3})
    assert isinstance(ring, MaglevRing)
    derived = ring.without({"a", "b"})  # some entries have a and b as owner and runner-up
    assert derived is not None and not derived.exact
    assert {derived.lookup(k) for k in KEYS[:200]} == {"c"}
    assert ring.without({"a", "b", "c"}) is None  # nothing left to serve: build instead


@SETTINGS
@given(members=names, data=st.data())
def test_hashring_removal_derived_equals_rebuild(members: list[str], data: st.DataObject) -> None:
    family = HashRingFamily(vnodes=16)
    ids = {n: i for i, n in enumerate(members, 1)}
    ring = family.build(ids)
    assert isinstance(ring, HashRing)
    gone = set(
        data.draw(
            st.lists(st.sampled_from(members), min_size=1, max_size=len(members) - 1, unique=True)
        )
    )
    derived = ring.without(gone)
    rebuilt = family.build({n: i for n, i in ids.items() if n not in gone})
    assert derived is not None and derived.names == rebuilt.names
    for key in KEYS[:400]:
        assert derived.lookup(key) == rebuilt.lookup(key)
        assert list(derived.candidates(key)) == list(rebuilt.candidates(key))
    assert derived.shares() == pytest.approx(rebuilt.shares())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=names, data=st.data())
def test_numpy_fill_equals_the_pure_python_reference(
    members: list[str], data: st.DataObject
) -> None:
    m = data.draw(st.sampled_from([2, 3, 101, 4099]))
    members = members[:m]
    w = {n: data.draw(weights) for n in members} if data.draw(st.booleans()) else None
    fast = MaglevFamily(slots=m)
    slow = MaglevFamily(slots=m)
    slow.vectorized = False
    ids = {n: i for i, n in enumerate(members, 1)}
    a, b = fast.build(ids, w), slow.build(ids, w)
    assert isinstance(a, MaglevRing) and isinstance(b, MaglevRing)
    assert same_table(a, b)
    assert [a.lookup(k) for k in KEYS[:200]] == [b.lookup(k) for k in KEYS[:200]]
    assert a.shares() == b.shares()


# -- weights (issue 11) ---------------------------------------------------------------------


@pytest.mark.parametrize("family", [MaglevFamily(slots=4099), HashRingFamily(vnodes=16)])
@SETTINGS
@given(members=names, data=st.data())
def test_changing_one_weight_moves_keys_only_to_or_from_it(
    family: MaglevFamily | HashRingFamily, members: list[str], data: st.DataObject
) -> None:
    ids = {n: i for i, n in enumerate(members, 1)}
    before = {n: data.draw(weights) for n in members}
    changed = data.draw(st.sampled_from(members))
    after = dict(before, **{changed: data.draw(weights.filter(lambda x: x != before[changed]))})
    a, b = family.build(ids, before), family.build(ids, after)
    for key in KEYS:
        x, y = a.lookup(key), b.lookup(key)
        assert x == y or changed in (x, y)
    if isinstance(a, MaglevRing) and isinstance(b, MaglevRing):
        old, new = named_owners(a), named_owners(b)
        moved = old != new
        assert ((old[moved] == changed) | (new[moved] == changed)).all()


def test_weights_one_two_three_share_the_keys_one_two_three() -> None:
    """Issue 11's target on the default family: 60,000 random ids, each share within 2%."""
    ring = make_family("maglev").build({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 2, "c": 3})
    rng = random.Random(2024)
    counts = dict.fromkeys("abc", 0)
    for _ in range(60_000):
        counts[ring.lookup(str(rng.randrange(100_000, 1_000_000)))] += 1
    for name, weight in (("a", 1), ("b", 2), ("c", 3)):
        assert abs(counts[name] / 60_000 / (weight / 6) - 1) <= 0.02
        assert abs(ring.shares()[name] / (weight / 6) - 1) <= 0.005


def test_default_weights_change_nothing() -> None:
    family = MaglevFamily(slots=4099)
    ids = {"a": 1, "b": 2, "c": 3}
    assert same_table(family.build(ids), family.build(ids, {"a": 1, "b": 1, "c": 1}))
    assert MaglevFamily(slots=4099).build(ids, None).shares() == family.build(ids).shares()


def test_bad_weights_and_classic_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="weights must be integers from 1 to"):
        MaglevFamily(slots=101).build({"a": 1}, {"a": 0})
    with pytest.raises(ValueError, match="does not take weights"):
        MaglevFamily("maglev-classic", slots=101, classic=True).build({"a": 1}, {"a": 2})
