"""The pool builds rings in the worker process and derives removals at once (issue 10).

Additions: the ring in use keeps serving until the worker's ring is in (nothing is built
on the event loop). Removals (death, ejection, /rm): derived from the ring in use, in the
same call. A removal while a build is in flight ends on the exact ring of the survivors.
"""

from __future__ import annotations

import pytest

from lbproxy.backends.base import ReplicaHandle
from lbproxy.control.pool import Pool, Replica, ReplicaState
from lbproxy.ring import make_family
from lbproxy.ring.offload import RingBuilder

pytestmark = pytest.mark.process  # the builds run in a worker process

KEYS = [str(k) for k in range(100_000, 103_000)]


def _join(pool: Pool, name: str) -> Replica:
    replica = pool.add(name)
    pool.set_handle(
        replica, ReplicaHandle(name, f"http://127.0.0.1:{1000 + replica.ring_id}", name)
    )
    return replica


async def test_addition_is_built_off_the_loop_and_removal_is_derived() -> None:
    family = make_family("maglev", slots=65537)
    pool = Pool(family, eject_after=1, builder=RingBuilder())
    first = [_join(pool, f"Server {i}") for i in (1, 2, 3)]
    pool.mark_up(*first)
    assert pool.ring.names == frozenset()  # the worker has it; nothing built inline
    await pool.settled()
    assert pool.ring.names == {"Server 1", "Server 2", "Server 3"}
    builds = pool.ring_builds

    fourth = _join(pool, "Server 4")
    pool.mark_up(fourth)
    assert fourth.state is ReplicaState.UP and "Server 4" not in pool.ring.names
    assert all(r.name != "Server 4" for k in KEYS[:200] for r in pool.pick(k))
    await pool.settled()
    assert "Server 4" in pool.ring.names and pool.ring_builds == builds + 1

    # a death: off the ring in the same call, derived, identical to a build
    assert pool.mark_down(first[1], "died")
    assert pool.ring.names == {"Server 1", "Server 3", "Server 4"}
    assert pool.ring_builds == builds + 1 and pool.ring_derivations == 1
    fresh = family.build({"Server 1": 1, "Server 3": 3, "Server 4": 4})
    assert all(pool.ring.lookup(k) == fresh.lookup(k) for k in KEYS)

    # an ejection inside a response callback: derived too, never a build
    pool.note_failure(first[2], "status 500")
    assert first[2].state is ReplicaState.EJECTED and "Server 3" not in pool.ring.names
    assert pool.ring_builds == builds + 1
    pool.readmit(first[2])  # back to a ring it had: reused, not built
    assert "Server 3" in pool.ring.names and pool.ring_builds == builds + 1
    pool.close()


async def test_removal_during_a_build_ends_on_the_survivors_ring() -> None:
    family = make_family("maglev", slots=65537)
    pool = Pool(family, builder=RingBuilder())
    first = [_join(pool, f"Server {i}") for i in (1, 2, 3)]
    pool.mark_up(*first)
    await pool.settled()
    late = [_join(pool, f"Server {i}") for i in (4, 5)]
    pool.mark_up(*late)  # a build starts in the worker
    pool.remove("Server 1")  # derived now from the ring in use
    assert pool.ring.names == {"Server 2", "Server 3"}
    await pool.settled()
    assert pool.ring.names == {"Server 2", "Server 3", "Server 4", "Server 5"}
    fresh = family.build({f"Server {i}": i for i in (2, 3, 4, 5)})
    assert all(pool.ring.lookup(k) == fresh.lookup(k) for k in KEYS)
    pool.close()


async def test_shutdown_during_a_build_ends_it_without_a_new_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`lbproxy serve` stops the worker at exit; a build still running then must end
    quietly, not log a dead worker and spawn another one on the way out."""
    import asyncio

    from lbproxy.ring import offload

    family = make_family("maglev")  # the full default table: a build takes seconds
    builder = RingBuilder()
    build = asyncio.ensure_future(builder.build(family, {f"S{i}": i for i in range(1, 200)}))
    while not getattr(offload._executor, "_pending_work_items", None):
        await asyncio.sleep(0.01)  # the build is submitted to the worker (not just queued here)
    offload.shutdown()
    try:
        with pytest.raises(asyncio.CancelledError):
            await build
        assert offload._executor is None
        assert "worker died" not in caplog.text
        with pytest.raises(asyncio.CancelledError):  # and no build starts a worker again
            await builder.build(family, {"S1": 1})
        assert offload._executor is None
    finally:
        offload.reopen()


async def test_the_last_removal_builds_nothing_and_the_worker_has_its_own_group() -> None:
    """An empty ring is installed at once (a shutdown removing every member used to start
    a worker build), and the worker is out of the balancer's process group, so a SIGTERM
    to the group (a supervisor stopping `lbproxy serve`) does not break a build."""
    import os

    from lbproxy.ring import offload

    family = make_family("maglev", slots=65537)
    pool = Pool(family, builder=RingBuilder())
    first = [_join(pool, f"Server {i}") for i in (1, 2)]
    pool.mark_up(*first)
    await pool.settled()
    builds = pool.ring_builds
    pool.remove("Server 1", "Server 2")
    assert pool.ring.names == frozenset() and pool.ring_builds == builds
    assert pool._build_task is None or pool._build_task.done()
    assert offload._executor is not None
    workers = list(offload._executor._processes.values())  # type: ignore[attr-defined]
    assert workers and all(os.getpgid(w.pid) == w.pid != os.getpgid(0) for w in workers)
    pool.close()
