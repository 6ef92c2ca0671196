"""Fault injection: results that arrive after their incarnation was replaced are dropped.

A member (stable name, ring id) outlives each incarnation (one process or container); a
heartbeat answer, a death event or a readiness wait belongs to the incarnation it was sent
to, as a Kubernetes probe belongs to one pod and not to the ReplicaSet.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from lbproxy.backends.base import BackendEvent, ReplicaHandle
from lbproxy.config import HealthConfig, ProxyConfig
from lbproxy.control.health import HealthMonitor
from lbproxy.control.pool import Pool, Replica, ReplicaState
from lbproxy.ring import make_family
from lbproxy_tools.launcher import free_loopback_port
from tests.conftest import BalancerUnderTest, wait_for

pytestmark = pytest.mark.inprocess


class _Heartbeat:
    """A replica stand-in whose /heartbeat waits for ``release`` and then answers ``status``."""

    def __init__(self, status: int, *, held: bool) -> None:
        self.status = status
        self.asked = asyncio.Event()
        self.release = asyncio.Event()
        if not held:
            self.release.set()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _heartbeat(self, request: web.Request) -> web.Response:
        self.asked.set()
        await self.release.wait()
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/heartbeat", self._heartbeat)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        port = free_loopback_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_stale_probe_miss_does_not_count_against_the_replacement(
    session: aiohttp.ClientSession,
) -> None:
    """With --fall 1 one miss replaces a replica: a miss of the dead one must not count."""
    old = _Heartbeat(503, held=True)  # the dying incarnation: its answer comes late, a miss
    new = _Heartbeat(200, held=False)
    await old.start()
    await new.start()
    try:
        pool = Pool(make_family("maglev"))
        member = pool.add("Server 1")
        pool.set_handle(member, ReplicaHandle("Server 1", old.url, "old"))
        pool.mark_up(member)
        downs: list[tuple[Replica, str]] = []
        monitor = HealthMonitor(
            pool,
            session,
            HealthConfig(interval=0.05, timeout=5.0, fall=1, rise=1),
            lambda replica, why: downs.append((replica, why)),
        )
        round_ = asyncio.create_task(monitor.check_once())
        await old.asked.wait()  # the probe of incarnation 1 is in flight...
        # ...while incarnation 1 dies and incarnation 2 takes over under the same name.
        assert pool.mark_down(member, "died")
        pool.set_handle(member, ReplicaHandle("Server 1", new.url, "new"))
        pool.mark_up(member)
        old.release.set()  # now incarnation 1's miss arrives
        await round_
        assert downs == [], "a miss of the dead incarnation counted against its replacement"
        assert member.state is ReplicaState.UP and member.incarnation is not None
        assert member.incarnation.fails == 0
        await monitor.check_once()  # the replacement's own probe passes
        assert downs == [] and member.state is ReplicaState.UP
    finally:
        await old.stop()
        await new.stop()


async def test_death_of_an_old_incarnation_is_dropped(lb: BalancerUnderTest) -> None:
    """A late 'died' for incarnation 1 must not take incarnation 2 off the ring."""
    pool = lb.balancer.pool
    member = pool.get("Server 2")
    assert member is not None and member.incarnation is not None
    first = member.incarnation.backend_id
    await lb.backend.crash("Server 2")
    await wait_for(
        lambda: (
            member.state is ReplicaState.UP
            and member.incarnation is not None
            and member.incarnation.backend_id != first
        )
    )
    launched = len(lb.backend.launched)
    lb.balancer.reconciler.on_death(BackendEvent("Server 2", first, "late duplicate (test)"))
    assert member.state is ReplicaState.UP and "Server 2" in pool.ring.names
    assert len(lb.backend.launched) == launched


@pytest.mark.lbconfig(proxy=ProxyConfig(eject_after=1))
async def test_passive_failure_of_an_old_incarnation_is_dropped(lb: BalancerUnderTest) -> None:
    """A proxied request's failure belongs to the incarnation it was sent to (Envoy's outlier
    detection counts per host, and a replacement is a new host): a connection of the dead
    incarnation that breaks after its replacement is up must not eject the replacement."""
    pool = lb.balancer.pool
    member = pool.get("Server 2")
    assert member is not None and member.incarnation is not None
    first = member.incarnation
    key = next(str(k) for k in range(100_000, 200_000) if pool.owner(str(k)) is member)
    held = asyncio.create_task(lb.client.get(lb.url + "/_t/hold", headers={"X-Request-ID": key}))
    await wait_for(lambda: member.in_flight == 1)
    # Incarnation 1 is reported dead but its process lingers with the request (a death
    # event that raced a slow exit): the member is replaced, the old connection still open.
    entry = lb.backend.live("Server 2")
    del lb.backend.running[entry.handle.backend_id]
    lb.balancer.reconciler.on_death(BackendEvent("Server 2", first.backend_id, "exited (test)"))
    await wait_for(
        lambda: member.state is ReplicaState.UP and member.incarnation is not first, timeout=10
    )
    retries = lb.balancer.stats.retries
    await entry.runner.cleanup()  # now incarnation 1's connection breaks: a passive failure
    await wait_for(lambda: lb.balancer.stats.retries > retries)  # retried elsewhere
    assert member.state is ReplicaState.UP, "the replacement was ejected for its predecessor"
    assert member.failures == 0 and "Server 2" in pool.ring.names
    lb.backend.release.set()
    async with await held as r:
        assert r.status == 200
