"""A Swarm task joins the ring by the same health check as every heartbeat (``--health-*``).

The engine is a stand-in that lists one replica service (what the engine answers is pinned
on a real swarm in test_swarm_e2e.py); the task is a real HTTP server on loopback.
"""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from lbproxy.backends.swarm import RingClaim, SwarmBackend, SwarmReplica
from lbproxy.config import Config, DockerConfig, HealthConfig
from lbproxy.control.pool import Pool, ReplicaState
from lbproxy.control.swarm import SwarmReconciler
from lbproxy.ring import make_family
from tests.conftest import wait_for

pytestmark = pytest.mark.inprocess


class _ListedSwarm(SwarmBackend):
    """The engine as one listed replica service whose running task answers at ``url``."""

    def __init__(self, config: Config, url: str) -> None:
        super().__init__(config)
        self._url = url

    async def replicas(self) -> list[SwarmReplica]:
        return [SwarmReplica("S1", 1, "svc1", task_id="t1", url=self._url)]

    async def claims(self) -> list[RingClaim]:
        return []


async def test_a_new_task_is_readied_by_the_configured_health_check() -> None:
    """The readiness probe asks what ``--health-path`` names, like HAProxy's ``httpchk``.

    It asked the default ``/heartbeat`` whatever the flag said, so on a service that only
    answers ``/ready`` no task ever joined the ring.
    """
    asked: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(status=200 if request.path == "/ready" else 404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    config = Config(
        backend="swarm",
        docker=DockerConfig(pool="pool1", memory_mb=64, cpus=0.25),
        health=HealthConfig(path="/ready", rise=1, timeout=1.0),
        start_timeout=30.0,
    )
    pool = Pool(make_family("maglev", slots=4099))
    try:
        async with aiohttp.ClientSession() as session:
            backend = _ListedSwarm(config, f"http://127.0.0.1:{port}")
            reconciler = SwarmReconciler(config, pool, backend, session)
            await reconciler.sync()
            member = pool.get("S1")
            assert member is not None
            # the first probe's answer decides: /ready passes, /heartbeat (404) never does
            await wait_for(lambda: bool(asked), timeout=10)
            assert asked[0] == "/ready"
            await wait_for(lambda: member.state is ReplicaState.UP, timeout=10)
            await reconciler.close(fast=True)
    finally:
        await runner.cleanup()
