"""Fault injection for the reconciler: it converges on what runs, whatever went missing.

Each test breaks one assumption the happy path makes (every death is reported, every
replica boots, nothing runs that the pool does not know, shutdown is quiet) and checks
that the pool converges and that the backend's list matches the pool afterwards, the
level-triggered rule of Kubernetes' controllers and Traefik's providers: events trigger,
the list decides.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest

from lbproxy.backends.base import BackendEvent, ReplicaHandle
from lbproxy.config import HealthConfig
from lbproxy.control.pool import ReplicaState
from lbproxy.control.reconcile import backoff_delay
from lbproxy.server import BalancerServer
from tests.conftest import InProcessBackend, fast_config, start_balancer, wait_for

pytestmark = pytest.mark.inprocess


async def _running_matches_pool(server: BalancerServer, backend: InProcessBackend) -> bool:
    """The backend's list is exactly the pool's current incarnations (no orphan, no gap)."""
    pool = server.balancer.pool
    members = {r.incarnation.backend_id for r in pool.replicas() if r.incarnation is not None}
    return {h.backend_id for h in await backend.list()} == members


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_degraded_boot_serves_and_converges(
    client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica that cannot start does not abort the balancer (a ReplicaSet with one
    failing pod still runs the others); it is retried until it comes up."""
    backend = InProcessBackend()
    backend.fail_names.add("Server 2")
    caplog.set_level(logging.WARNING)
    server = await start_balancer(fast_config(), backend)
    try:
        pool = server.balancer.pool
        assert pool.names() == ["Server 1", "Server 2", "Server 3"]
        assert pool.ring.names == frozenset({"Server 1", "Server 3"})
        down = pool.get("Server 2")
        assert down is not None and down.state is ReplicaState.DOWN
        assert "serving with 2 of 3 replicas" in caplog.text
        assert "refusing to start 'Server 2'" in caplog.text  # why, in the log
        async with client.get(server.url + "/home") as r:
            assert r.status == 200
        backend.fail_names.clear()  # the cause goes away: the pool converges
        await wait_for(lambda: down.state is ReplicaState.UP, timeout=20)
        assert await _running_matches_pool(server, backend)
    finally:
        await server.stop()
    assert backend.running == {}


class _AdoptingBackend(InProcessBackend):
    """Four replicas already run when the balancer starts (a restart after /add)."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self._count = count

    async def adopt(self) -> list[ReplicaHandle]:
        return [await self.launch(f"Server {k}", k) for k in range(1, self._count + 1)]


async def test_adopted_replicas_beyond_target_are_kept_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = _AdoptingBackend(4)
    caplog.set_level(logging.WARNING)
    server = await start_balancer(fast_config(replicas=3), backend)
    try:
        pool = server.balancer.pool
        assert len(pool) == 4 and len(pool.ring.names) == 4
        assert len(backend.launched) == 4  # nothing launched on top, nothing stopped
        assert "adopted 4 running replicas, more than --replicas=3" in caplog.text
    finally:
        await server.stop()


async def test_resync_removes_an_orphan() -> None:
    """A labelled replica that no member owns (a launch that leaked, a name an earlier
    balancer removed) is removed by the next resync."""
    backend = InProcessBackend()
    server = await start_balancer(fast_config(), backend)
    try:
        orphan = await backend.launch("Server 9", 9)  # runs, but the pool never heard of it
        reconciler = server.balancer.reconciler
        reconciler.request_resync()
        await wait_for(lambda: orphan.backend_id not in backend.running)
        assert reconciler.orphans_removed == 1
        assert server.balancer.pool.names() == ["Server 1", "Server 2", "Server 3"]
        assert await _running_matches_pool(server, backend)
    finally:
        await server.stop()


async def test_death_in_an_event_gap_is_found_by_resync() -> None:
    """The death is never reported (the event stream was down) and heartbeats are too slow
    to notice: the resync after the stream reconnects finds and replaces it, once."""
    backend = InProcessBackend()
    config = fast_config(health=HealthConfig(interval=3600.0, fall=100))
    server = await start_balancer(config, backend)
    try:
        pool = server.balancer.pool
        victim = pool.get("Server 2")
        assert victim is not None and victim.incarnation is not None
        first = victim.incarnation
        entry = backend.live("Server 2")
        backend.running.pop(entry.handle.backend_id)
        await entry.runner.cleanup()  # dead, and no event says so
        launched = len(backend.launched)
        # What the backend does when its event stream comes back: ask for a resync.
        server.balancer.reconciler.on_death(BackendEvent("", "", "reconnected", "resync"))
        await wait_for(lambda: victim.state is ReplicaState.UP and victim.incarnation is not first)
        assert first.dead and len(backend.launched) == launched + 1
        # The late death event of the same incarnation changes nothing.
        server.balancer.reconciler.on_death(
            BackendEvent("Server 2", first.backend_id, "late event")
        )
        server.balancer.reconciler.request_resync()
        resyncs = server.balancer.reconciler.resyncs
        await wait_for(lambda: server.balancer.reconciler.resyncs > resyncs)
        assert len(backend.launched) == launched + 1 and victim.state is ReplicaState.UP
        assert await _running_matches_pool(server, backend)
    finally:
        await server.stop()


async def test_resync_replaces_an_unlisted_replica_whose_address_still_answers() -> None:
    """The backend's list says what runs: an incarnation gone from it is replaced even when
    something still answers at its address. A heartbeat cannot tell our replica from
    another process that took its port (or a container that took its IP), so it is no
    evidence that ours still runs (Kubernetes likewise replaces a pod the API no longer
    lists, whatever answers at its old IP)."""
    backend = InProcessBackend()
    config = fast_config(health=HealthConfig(interval=3600.0, fall=100))
    server = await start_balancer(config, backend)
    stranger = backend.live("Server 2")
    try:
        pool = server.balancer.pool
        victim = pool.get("Server 2")
        assert victim is not None and victim.incarnation is not None
        first = victim.incarnation
        # Gone from the backend's list, while its address keeps answering heartbeats.
        backend.running.pop(stranger.handle.backend_id)
        launched = len(backend.launched)
        reconciler = server.balancer.reconciler
        reconciler.request_resync()
        await wait_for(lambda: victim.state is ReplicaState.UP and victim.incarnation is not first)
        assert first.dead and len(backend.launched) == launched + 1
        assert await _running_matches_pool(server, backend)
        # Converged: another resync changes nothing.
        resyncs = reconciler.resyncs
        reconciler.request_resync()
        await wait_for(lambda: reconciler.resyncs > resyncs)
        assert len(backend.launched) == launched + 1 and victim.state is ReplicaState.UP
    finally:
        await stranger.runner.cleanup()
        await server.stop()


class _GatedBackend(InProcessBackend):
    """Launches of ``gated`` names pause after the replica runs, before launch() returns."""

    def __init__(self) -> None:
        super().__init__()
        self.gated: set[str] = set()
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def launch(self, name: str, ring_id: int) -> ReplicaHandle:
        handle = await super().launch(name, ring_id)
        if name in self.gated:
            self.reached.set()
            await self.release.wait()
        return handle


async def test_resync_leaves_a_launch_in_flight_alone(client: aiohttp.ClientSession) -> None:
    """The list can show a replica whose launch() has not returned yet: not an orphan."""
    backend = _GatedBackend()
    server = await start_balancer(fast_config(), backend)
    try:
        backend.gated.add("S7")
        add = asyncio.create_task(
            client.post(server.url + "/add", json={"n": 1, "hostnames": ["S7"]})
        )
        await backend.reached.wait()
        reconciler = server.balancer.reconciler
        resyncs = reconciler.resyncs
        reconciler.request_resync()
        await wait_for(lambda: reconciler.resyncs > resyncs)
        assert reconciler.orphans_removed == 0
        backend.release.set()
        async with await add as r:
            assert r.status == 200
        assert "S7" in server.balancer.pool.ring.names
        assert await _running_matches_pool(server, backend)
    finally:
        await server.stop()


async def test_nothing_is_replaced_once_shutdown_begins(client: aiohttp.ClientSession) -> None:
    """A replica that dies while the front-end drains stays dead (issue 10): the
    reconciler stops replacing before the drain, not after it."""
    backend = InProcessBackend()
    server = await start_balancer(fast_config(stop_timeout=30.0), backend)
    pool = server.balancer.pool
    held = asyncio.create_task(client.get(server.url + "/_t/hold"))  # holds the drain open
    await wait_for(lambda: any(r.in_flight for r in pool.replicas()))
    busy = next(r for r in pool.replicas() if r.in_flight)
    other = next(r for r in pool.replicas() if r is not busy)
    stopping = asyncio.create_task(server.stop())
    await wait_for(lambda: server.balancer.reconciler.closing)
    launched = len(backend.launched)
    await backend.crash(other.name)  # dies during the drain
    # A replacement would launch within a few loop turns; give it far more than that.
    with pytest.raises(AssertionError, match="not reached"):
        await wait_for(lambda: len(backend.launched) > launched, timeout=0.3)
    assert not stopping.done()  # still draining the held request
    backend.release.set()
    async with await held as r:  # the in-flight request still completes
        assert r.status == 200
    await stopping
    assert len(backend.launched) == launched, "a replica was replaced during shutdown"
    assert backend.running == {}


async def test_stopped_incarnations_leave_no_trace() -> None:
    """Docker reports every stop as a death and every process replacement has a new port:
    neither may grow the reconciler's or the front-end's maps (issue 10, bounded memory)."""

    class _ReportsStops(InProcessBackend):
        async def stop(self, handle: ReplicaHandle, *, timeout: float) -> None:
            await super().stop(handle, timeout=timeout)
            assert self._on_death is not None
            self._on_death(BackendEvent(handle.name, handle.backend_id, "stopped (test)"))

    backend = _ReportsStops()
    server = await start_balancer(fast_config(), backend)
    try:
        pool = server.balancer.pool
        reconciler = server.balancer.reconciler
        assert server.frontend is not None
        upstreams = server.frontend.upstreams
        async with aiohttp.ClientSession() as client:
            for cycle in range(20):
                victim = pool.get("Server 1")
                assert victim is not None
                before = victim.incarnation
                await backend.crash("Server 1")
                await wait_for(
                    lambda v=victim, b=before: (
                        v.state is ReplicaState.UP  # type: ignore[misc]
                        and v.incarnation is not b
                    )
                )
                for k in range(12):  # reach every replica, the new incarnation included
                    async with client.get(
                        server.url + "/home", headers={"X-Request-ID": f"{cycle}-{k}"}
                    ) as r:
                        assert r.status == 200
                async with client.post(server.url + "/add", json={"n": 1}) as r:
                    assert r.status == 200
                async with client.delete(server.url + "/rm", json={"n": 1}) as r:
                    assert r.status == 200
        assert len(reconciler._dead) == 0
        assert len(reconciler._live) == len(pool) == 3
        live_urls = {r.url for r in pool.replicas()}
        assert set(upstreams._addr) - live_urls <= {server.frontend.control_key}
        assert set(upstreams._hosts) - live_urls <= {server.frontend.control_key}
    finally:
        await server.stop()


def test_replacement_backoff_is_jittered() -> None:
    """Equal jitter: each retry waits between half and all of its exponential step, and
    replicas that failed together do not retry in lock-step."""
    rng = random.Random(2024)
    for attempts, step in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (9, 10.0)]:
        delays = [backoff_delay(attempts, rng) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len({round(d, 6) for d in delays}) > 150
