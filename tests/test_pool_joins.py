"""Replicas joining the ring while it is built off the loop (issue 12, time to serving).

A ring over new members is built in the worker (about 1 s for the default table at
N = 10); replicas that become ready meanwhile must not cost a build each. Here a gated
builder stands in for the worker: each build waits until the test lets it finish, so what
is built, and when what is installed, is exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import cast

import pytest

from lbproxy.backends.base import ReplicaHandle
from lbproxy.control.pool import Pool, Replica
from lbproxy.ring import Ring, RingFamily, make_family
from lbproxy.ring.offload import RingBuilder, build_ring

pytestmark = pytest.mark.unit


class GatedBuilder:
    """``RingBuilder.build`` inline, but each build finishes only when ``finish`` is called."""

    def __init__(self) -> None:
        self.started: list[frozenset[str]] = []
        self._gates: list[asyncio.Event] = []
        self.waiting = asyncio.Event()

    async def build(
        self,
        family: RingFamily,
        members: Mapping[str, int],
        weights: Mapping[str, int] | None = None,
    ) -> Ring:
        self.started.append(frozenset(members))
        gate = asyncio.Event()
        self._gates.append(gate)
        self.waiting.set()
        await gate.wait()
        return build_ring(family, members, weights)

    async def finish(self) -> None:
        """Let the oldest build waiting finish, once one waits."""
        while not any(not g.is_set() for g in self._gates):
            self.waiting.clear()
            await self.waiting.wait()
        next(g for g in self._gates if not g.is_set()).set()

    def close(self) -> None:
        pass


def _join(pool: Pool, name: str) -> Replica:
    replica = pool.add(name)
    pool.set_handle(
        replica, ReplicaHandle(name, f"http://127.0.0.1:{1000 + replica.ring_id}", name)
    )
    return replica


async def _pool_of_one() -> tuple[Pool, GatedBuilder]:
    builder = GatedBuilder()
    pool = Pool(make_family("maglev", slots=4099), builder=cast(RingBuilder, builder))
    pool.mark_up(_join(pool, "Server 1"))
    await builder.finish()
    await pool.settled()
    return pool, builder


async def test_an_add_of_several_replicas_joins_them_in_one_build() -> None:
    pool, builder = await _pool_of_one()
    pool.mark_up(*[_join(pool, f"Server {i}") for i in (2, 3, 4)])  # /add's one mark_up
    await builder.finish()
    await pool.settled()
    assert builder.started[1:] == [frozenset(f"Server {i}" for i in (1, 2, 3, 4))]


async def _started(builder: GatedBuilder, n: int) -> None:
    """Until ``n`` builds have started (the build task runs on the next loop turn)."""
    while len(builder.started) < n:
        builder.waiting.clear()
        await builder.waiting.wait()


async def test_replicas_ready_in_the_same_loop_turn_share_one_build() -> None:
    pool, builder = await _pool_of_one()
    for name in ("A", "B", "C"):  # three health results handled in one loop turn
        pool.mark_up(_join(pool, name))
    await builder.finish()
    await pool.settled()
    assert builder.started[1:] == [frozenset({"Server 1", "A", "B", "C"})]


async def test_replicas_ready_one_by_one_during_a_build_share_the_next_one() -> None:
    """Three replicas up one after the other (replacements, or heartbeats passing a few
    ms apart): the first starts a build, the other two join while it runs and share the
    next build; never a build each."""
    pool, builder = await _pool_of_one()
    pool.mark_up(_join(pool, "A"))
    await _started(builder, 2)  # {Server 1, A} is being built
    pool.mark_up(_join(pool, "B"))
    pool.mark_up(_join(pool, "C"))
    await builder.finish()
    await builder.finish()
    await pool.settled()
    assert builder.started[1:] == [
        frozenset({"Server 1", "A"}),
        frozenset({"Server 1", "A", "B", "C"}),
    ]
    assert pool.ring.names == {"Server 1", "A", "B", "C"}


async def test_a_build_overtaken_by_more_joins_is_still_installed() -> None:
    """The build of {Server 1, A} finishes after B joined: it is still closer to the
    target than the ring in use, so A serves from then on, not only once the build that
    adds B is in too (it was cached and set aside: A waited for two builds)."""
    pool, builder = await _pool_of_one()
    pool.mark_up(_join(pool, "A"))
    await _started(builder, 2)
    pool.mark_up(_join(pool, "B"))
    await builder.finish()  # {Server 1, A} is built; {Server 1, A, B} starts
    await _started(builder, 3)
    assert pool.ring.names == {"Server 1", "A"}
    await builder.finish()
    await pool.settled()
    assert pool.ring.names == {"Server 1", "A", "B"}


async def test_the_ring_an_add_will_need_is_built_while_its_replicas_start() -> None:
    """``prepare`` (called by /add right after it launches the replicas) starts the build
    of the ring they will join, so that ``mark_up`` finds it built and they serve at once:
    a start (about 0.5 s for three processes) and a build (about 1 s at the default table)
    overlap instead of adding up (bench/autoscale_step.py: up at 0.97 s, on the ring at
    1.90 s)."""
    pool, builder = await _pool_of_one()
    joining = [_join(pool, f"Server {i}") for i in (2, 3, 4)]
    pool.prepare(joining)
    await _started(builder, 2)
    assert builder.started[1] == frozenset(f"Server {i}" for i in (1, 2, 3, 4))
    await builder.finish()  # built before the replicas are up
    while len(pool._recent_rings) < 2:
        await asyncio.sleep(0)
    pool.mark_up(*joining)
    assert pool.ring.names == {f"Server {i}" for i in (1, 2, 3, 4)}  # in the same call
    assert len(builder.started) == 2  # and not built again


async def test_a_prepared_build_still_running_at_mark_up_is_awaited_not_repeated() -> None:
    pool, builder = await _pool_of_one()
    joining = [_join(pool, f"Server {i}") for i in (2, 3)]
    pool.prepare(joining)
    await _started(builder, 2)
    pool.mark_up(*joining)  # up before its ring is built
    assert pool.ring.names == {"Server 1"}
    await builder.finish()
    await pool.settled()
    assert pool.ring.names == {"Server 1", "Server 2", "Server 3"}
    assert len(builder.started) == 2


async def test_a_prepared_ring_that_no_longer_fits_is_not_used() -> None:
    """Two members died while the others started: the ring prepared with them is not the
    ring the survivors need (two removals are not exact), so the usual build runs."""
    pool, builder = await _pool_of_one()
    joining = [_join(pool, f"Server {i}") for i in (2, 3, 4)]
    pool.prepare(joining)
    await _started(builder, 2)
    await builder.finish()
    pool.remove("Server 3", "Server 4")  # their launches failed: /add rolls them back
    pool.mark_up(joining[0])
    await builder.finish()
    await pool.settled()
    assert pool.ring.names == {"Server 1", "Server 2"}
    assert builder.started[2] == frozenset({"Server 1", "Server 2"})


def _same_ring(ring: Ring, family: RingFamily, members: Mapping[str, int]) -> None:
    """``ring`` places every key as a fresh build over ``members`` does."""
    fresh = build_ring(family, members, None)
    assert ring.names == fresh.names
    keys = [str(k) for k in range(0, 4099 * 7, 7)]
    assert [ring.lookup(k) for k in keys] == [fresh.lookup(k) for k in keys]


async def test_a_ring_built_with_one_member_more_serves_without_a_build() -> None:
    """A Maglev ring keeps every entry's runner-up, so the ring without one of its members
    is derived exactly in O(1) (``MaglevRing.without``): a ring prepared for three joiners
    serves the two that came up when the third failed, and no build runs."""
    pool, builder = await _pool_of_one()
    joining = [_join(pool, f"Server {i}") for i in (2, 3)]
    pool.prepare(joining)
    await _started(builder, 2)
    await builder.finish()
    while not pool.covers(["Server 2", "Server 3"]):
        await asyncio.sleep(0)
    pool.remove("Server 3")
    pool.mark_up(joining[0])
    assert pool.ring.names == {"Server 1", "Server 2"}  # in the same call
    assert len(builder.started) == 2
    _same_ring(pool.ring, pool.family, {"Server 1": 1, "Server 2": 2})


async def test_rings_are_built_ahead_for_the_names_the_next_add_will_take() -> None:
    """``speculate`` (the autoscaler, while nothing changes) builds the ring the UP members
    would make with names not yet in the pool, so that the next scale-up's replicas serve
    as soon as they are up: on two loaded cores a build started with the launch ended
    0.45-1.0 s after the replicas passed their heartbeats (bench/autoscale_step.py). The
    ring for n more serves an /add of n and of n - 1."""
    pool, builder = await _pool_of_one()
    assert not pool.covers(["Server 2", "Server 3"])
    assert not pool.speculate(["Server 2", "Server 3"])  # started
    await _started(builder, 2)
    assert builder.started[1] == frozenset({"Server 1", "Server 2", "Server 3"})
    assert not pool.speculate(["Server 2", "Server 3", "Server 4"])  # one at a time
    await builder.finish()
    while not pool.covers(["Server 2", "Server 3"]):
        await asyncio.sleep(0)
    assert pool.speculate(["Server 2", "Server 3"])  # nothing more to do
    assert pool.covers(["Server 2"])
    assert not pool.covers(["Server 2", "Server 3", "Server 4"])
    joining = [_join(pool, "Server 2")]  # an /add of one
    pool.prepare(joining)
    pool.mark_up(*joining)
    assert pool.ring.names == {"Server 1", "Server 2"}  # in the same call
    assert len(builder.started) == 2  # nothing built for it
    _same_ring(pool.ring, pool.family, {"Server 1": 1, "Server 2": 2})


async def test_a_join_during_a_build_ahead_that_covers_it_waits_for_that_build() -> None:
    pool, builder = await _pool_of_one()
    assert not pool.speculate(["Server 2", "Server 3", "Server 4"])
    await _started(builder, 2)
    joining = [_join(pool, f"Server {i}") for i in (2, 3)]  # the step came meanwhile
    pool.prepare(joining)  # covered by the build running: no second build
    pool.mark_up(*joining)
    assert pool.ring.names == {"Server 1"}
    await builder.finish()
    await pool.settled()
    assert pool.ring.names == {"Server 1", "Server 2", "Server 3"}
    assert len(builder.started) == 2
    _same_ring(pool.ring, pool.family, {f"Server {i}": i for i in (1, 2, 3)})


async def test_nothing_is_built_ahead_while_the_pool_changes() -> None:
    """A member still starting, or a build of the ring in use still running: the members
    the speculation would assume are not settled, and the worker has real work."""
    pool, builder = await _pool_of_one()
    starting = _join(pool, "Server 2")
    assert not pool.speculate(["Server 3"])
    pool.mark_up(starting)  # its build starts
    await _started(builder, 2)
    assert not pool.speculate(["Server 3"])
    assert len(builder.started) == 2
    await builder.finish()
    await pool.settled()
    assert not pool.speculate(["Server 3"])
    await _started(builder, 3)
    assert builder.started[2] == frozenset({"Server 1", "Server 2", "Server 3"})
    await builder.finish()
