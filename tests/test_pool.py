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


class _Clock:
    """A settable monotonic clock: ejection times are seconds long, tests are not."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _envoy_pool(n: int, clock: _Clock, **kw: float) -> Pool:
    pool = Pool(
        make_family("maglev", slots=4099),
        eject_after=3,
        eject_base_time=kw.get("base", 10.0),
        eject_max_time=kw.get("cap", 300.0),
        max_eject_percent=int(kw.get("pct", 50)),
        clock=clock,
    )
    replicas = [pool.add(f"Server {i}") for i in range(1, n + 1)]
    for r in replicas:
        pool.set_handle(r, ReplicaHandle(r.name, f"http://127.0.0.1:{1000 + r.ring_id}", r.name))
    pool.mark_up(*replicas)
    return pool


def _eject(pool: Pool, replica_name: str) -> None:
    replica = pool.get(replica_name)
    assert replica is not None
    for _ in range(3):
        pool.note_failure(replica, "status 500")


def test_ejected_replica_stays_out_for_base_time_times_ejections() -> None:
    """Envoy's outlier detection: ejection time = base_ejection_time x times ejected (capped
    at max_ejection_time); a passing heartbeat before that does not readmit (no flapping of
    a replica that 5xx's on one path while its heartbeat passes)."""
    clock = _Clock()
    pool = _envoy_pool(3, clock, base=10.0, cap=25.0)
    a = pool.get("Server 1")
    assert a is not None
    _eject(pool, a.name)
    assert a.state is ReplicaState.EJECTED
    clock.now += 9.9
    assert not pool.readmit(a) and a.state is ReplicaState.EJECTED
    clock.now += 0.2
    assert pool.readmit(a) and a.state is ReplicaState.UP
    _eject(pool, a.name)  # second ejection: 2 x 10 s
    clock.now += 19.9
    assert not pool.readmit(a)
    clock.now += 0.2
    assert pool.readmit(a)
    _eject(pool, a.name)  # third: 3 x 10 s, capped at 25 s
    clock.now += 25.1
    assert pool.readmit(a) and a.ejections == 3
    clock.now += 25.1  # healthy for longer than the cap: the multiplier starts over
    _eject(pool, a.name)
    clock.now += 10.1
    assert pool.readmit(a) and a.ejections == 4


def test_max_eject_percent_caps_how_many_are_out_at_once() -> None:
    """Envoy's max_ejection_percent: with 4 replicas and 50 %, a third failing replica stays
    on the ring; at least one replica always serves whatever the percentage."""
    clock = _Clock()
    pool = _envoy_pool(4, clock, pct=50)
    for name in ("Server 1", "Server 2", "Server 3"):
        _eject(pool, name)
    states = [r.state for r in pool.replicas()]
    assert states.count(ReplicaState.EJECTED) == 2
    assert len(pool.ring.names) == 2
    tiny = _envoy_pool(3, _Clock(), pct=10)  # 10 % of 3 rounds down: one may still go
    _eject(tiny, "Server 1")
    _eject(tiny, "Server 2")
    assert [r.state for r in tiny.replicas()].count(ReplicaState.EJECTED) == 1
