"""Additions, removals and weight changes derived from the last table equal a full build.

Issue 10: the build worker keeps the last rank-order table's owners, runner-ups and their
ranks (``lbproxy.ring.rankstate``) and derives the next member set from them instead of
walking the whole table again. A derivation must be the full build's equal entry by entry
(owner AND runner-up, so later removals derived on the loop stay exact), whatever the
sequence of changes, weights included, and ties broken by name as the full build does.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbproxy.ring import maglev, offload, rankstate
from lbproxy.ring.maglev import MaglevFamily, MaglevRing

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = [f"Server {i}" for i in range(1, 13)] + ["a", "b", "zz", "é"]
#: One step: the members and their weights after it (a set of names, each with a weight).
step = st.dictionaries(st.sampled_from(NAMES), st.integers(1, 3), min_size=1, max_size=9)


def same_state(a: rankstate.RankState, b: rankstate.RankState) -> None:
    assert a.names == b.names and a.weights == b.weights
    np.testing.assert_array_equal(a.owner, b.owner)
    np.testing.assert_array_equal(a.orank, b.orank)
    np.testing.assert_array_equal(a.runner, b.runner)
    np.testing.assert_array_equal(a.rrank, b.rrank)


def same_ring(a: MaglevRing, b: MaglevRing) -> None:
    """Entry by entry, owner and runner-up (the packed table), and the pair counts."""
    assert a.slots == b.slots and a.weights == b.weights
    assert bytes(a._table) == bytes(b._table)
    assert a._pairs is not None and b._pairs is not None
    assert [bytes(x) for x in a._pairs] == [bytes(x) for x in b._pairs]


@SETTINGS
@given(m=st.sampled_from([2, 3, 5, 101, 4099]), steps=st.lists(step, min_size=2, max_size=6))
def test_a_chain_of_derivations_equals_a_full_build_at_every_step(
    m: int, steps: list[dict[str, int]]
) -> None:
    family = MaglevFamily(slots=m)
    steps = [dict(list(s.items())[:m]) for s in steps]  # at most M replicas fit
    state = rankstate.full(m, *family.validated(steps[0], steps[0]))
    for members in steps[1:]:
        names, w = family.validated(members, members)
        derived = rankstate.derive(state, names, w, always=True)
        full = rankstate.full(m, names, w)
        if derived is None:  # nothing stayed as it was: the worker builds from scratch
            old = dict(zip(state.names, state.weights, strict=True))
            assert all(members.get(x) != weight for x, weight in old.items())
            state = full
            continue
        same_state(derived, full)
        ring = rankstate.ring_of(family, derived)
        built = family.build(dict.fromkeys(members, 1), members)
        assert isinstance(ring, MaglevRing) and isinstance(built, MaglevRing)
        same_ring(ring, built)
        state = derived


def test_ties_go_to_the_name_that_sorts_first_as_in_a_full_build() -> None:
    """At M = 2 every entry is a tie for someone: the derivation must break it by name."""
    family = MaglevFamily(slots=3)
    for order in (["b", "a", "c"], ["c", "b", "a"], ["a", "c", "b"]):
        state = rankstate.full(3, [order[0]], (1,))
        for k in range(2, 4):
            names, w = family.validated(dict.fromkeys(order[:k], 1), None)
            derived = rankstate.derive(state, names, w, always=True)
            assert derived is not None
            same_state(derived, rankstate.full(3, names, w))
            state = derived


def test_a_full_state_gives_the_full_builds_ring() -> None:
    family = MaglevFamily(slots=4099)
    members = {"a": 1, "b": 2, "c": 3}
    for weights in (None, {"a": 1, "b": 2, "c": 3}):
        ring, state = family.build_with_state(None, members, weights)
        assert state is not None and state.how == "full"
        built = family.build(members, weights)
        assert isinstance(ring, MaglevRing) and isinstance(built, MaglevRing)
        same_ring(ring, built)


def test_one_addition_is_derived_and_a_large_change_is_built() -> None:
    family = MaglevFamily(slots=4099)
    members = {f"r{i}": i for i in range(1, 21)}
    _, state = family.build_with_state(None, members)
    ring, state = family.build_with_state(state, {**members, "new": 99})
    assert state.how == "derived"
    same_ring(ring, family.build({**members, "new": 99}))  # type: ignore[arg-type]
    others = {f"s{i}": i for i in range(1, 21)}
    ring, state = family.build_with_state(state, {"r1": 1, **others})
    assert state.how == "full"


def test_the_worker_keeps_one_state_per_table_size_and_derives_from_it() -> None:
    """``build_shared``'s path in the worker, run here: the state is remembered per size."""
    offload._states.clear()
    small, other = MaglevFamily(slots=4099), MaglevFamily("maglev", slots=101)
    members = {f"r{i}": i for i in range(1, 11)}
    offload._build_remembering(small, members, None)
    offload._build_remembering(other, members, None)
    ring = offload._build_remembering(small, {**members, "new": 11}, None)
    assert offload._states[small.state_key].how == "derived"
    same_ring(ring, small.build({**members, "new": 11}))  # type: ignore[arg-type]
    assert offload._states[other.state_key].how == "full"
    classic = MaglevFamily("maglev-classic", slots=101, classic=True)
    offload._build_remembering(classic, members, None)  # keeps none
    assert classic.state_key is None and len(offload._states) == 2
    pickle.dumps(ring)  # what crosses the pipe when /dev/shm is full
    offload._states.clear()


def test_a_refused_build_keeps_the_workers_state() -> None:
    """A member set the family refuses (a bad weight) must not cost the next /add its
    derivation; a derivation that failed half-way must not leave a stale state behind."""
    offload._states.clear()
    family = MaglevFamily(slots=4099)
    members = {f"r{i}": i for i in range(1, 11)}
    offload._build_remembering(family, members, None)
    with pytest.raises(ValueError, match="weights must be integers"):
        offload._build_remembering(family, {**members, "new": 11}, {"new": 0})
    offload._build_remembering(family, {**members, "new": 11}, None)
    assert offload._states[family.state_key].how == "derived"
    spent = offload._states[family.state_key]
    spent.orank = None  # a derivation breaks on it after it started rewriting the arrays
    with pytest.raises(TypeError):
        offload._build_remembering(family, members, None)
    assert spent.spent and family.state_key not in offload._states
    offload._states.clear()


def test_pair_counts_by_bincount_equal_the_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small value ranges count pairs with ``np.bincount``, large ones sort (N >= 2048)."""
    family = MaglevFamily(slots=4099)
    members = {f"r{i}": i for i in range(1, 41)}
    counted = family.build(members, {"r7": 3})
    monkeypatch.setattr(maglev, "_BINCOUNT_BITS", 0)
    sorted_ = family.build(members, {"r7": 3})
    assert isinstance(counted, MaglevRing) and isinstance(sorted_, MaglevRing)
    same_ring(counted, sorted_)
