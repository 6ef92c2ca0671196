"""The pool's membership and ring transitions, without any I/O."""

from __future__ import annotations

import pytest

from lbproxy.backends.base import ReplicaHandle
from lbproxy.control.pool import Pool, ReplicaState
from lbproxy.ring import make_family

pytestmark = pytest.mark.unit


def _pool(n: int) -> Pool:
    pool = Pool(make_family("maglev", slots=4099), eject_after=3)
    replicas = [pool.add(f"Server {i}") for i in range(1, n + 1)]
    for r in replicas:
        pool.set_handle(r, ReplicaHandle(r.name, f"http://127.0.0.1:{1000 + r.ring_id}", r.name))
    pool.mark_up(*replicas)
    return pool


def test_ring_ids_are_smallest_free_and_kept_by_name() -> None:
    pool = _pool(3)
    assert [r.ring_id for r in pool.replicas()] == [1, 2, 3]
    pool.remove("Server 2")
    assert pool.add("S9").ring_id == 2  # the freed id is reused
    assert pool.add("S10", ring_id=7).ring_id == 7  # an adopted replica keeps its id


def test_replacement_restores_the_same_ring_without_a_rebuild() -> None:
    pool = _pool(3)
    before = pool.ring
    builds = pool.ring_builds
    victim = pool.get("Server 2")
    assert victim is not None
    assert pool.mark_down(victim, "died")
    # the death is derived from the ring in use (issue 10), not built
    assert "Server 2" not in pool.ring.names and pool.ring_builds == builds
    assert pool.ring_derivations == 1
    pool.set_handle(victim, ReplicaHandle("Server 2", "http://127.0.0.1:9999", "new"))
    pool.mark_up(victim)
    assert pool.ring is before and pool.ring_builds == builds


def test_batch_remove_derives_once() -> None:
    pool = _pool(6)
    builds = pool.ring_builds
    removed = pool.remove("Server 2", "Server 5", "Server 6")
    assert [r.state for r in removed] == [ReplicaState.DRAINING] * 3
    assert pool.ring.names == frozenset({"Server 1", "Server 3", "Server 4"})
    # one derivation; a build only when removed replicas were each other's runner-up
    assert pool.ring_derivations == 1 and pool.ring_builds <= builds + 1
    fresh = pool.family.build({"Server 1": 1, "Server 3": 3, "Server 4": 4})
    assert all(pool.ring.lookup(str(k)) == fresh.lookup(str(k)) for k in range(100000, 102000))


def test_pick_skips_replicas_that_are_not_up() -> None:
    pool = _pool(3)
    owner = pool.owner("123456")
    owner.state = ReplicaState.DOWN  # before any rebuild: pick must already avoid it
    assert owner not in list(pool.pick("123456"))


def test_ejection_never_empties_the_ring() -> None:
    pool = _pool(2)
    a, b = pool.replicas()
    for _ in range(3):
        pool.note_failure(a, "status 500")
    assert a.state is ReplicaState.EJECTED and pool.ring.names == frozenset({b.name})
    for _ in range(5):
        pool.note_failure(b, "status 500")
    assert b.state is ReplicaState.UP  # the last one stays: a degraded answer beats none
    pool.readmit(a)
    assert a.state is ReplicaState.UP and a.failures == 0 and len(pool.ring.names) == 2
