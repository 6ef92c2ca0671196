"""``--health-path``, ``--health-method`` and ``--health-status``: what a heartbeat asks and
which answers pass (HAProxy's ``option httpchk`` / ``http-check expect status`` semantics:
redirects are not followed, the status range alone decides)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from lbproxy.config import HealthConfig
from lbproxy.control.health import probe, wait_ready
from lbproxy_tools.launcher import free_loopback_port
from tests.conftest import BalancerUnderTest, wait_for

pytestmark = pytest.mark.inprocess


@pytest.fixture
async def service() -> AsyncIterator[tuple[str, list[tuple[str, str]]]]:
    """A small service that records what each probe asked for."""
    asked: list[tuple[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        asked.append((request.method, request.path_qs))
        code = int(request.match_info.get("code", "200"))
        headers = {"Location": "/status/200"} if 300 <= code < 400 else None
        return web.Response(status=code, headers=headers)

    async def get_only(request: web.Request) -> web.Response:
        asked.append((request.method, request.path_qs))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/status/{code}", handle)
    app.router.add_get("/", get_only, allow_head=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_loopback_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", asked
    await runner.cleanup()


@pytest.mark.parametrize(
    ("path", "status", "passes"),
    [
        ("/status/200", (200, 299), True),
        ("/status/204", (200, 299), True),
        ("/status/302", (200, 299), False),  # not followed: a redirect is not a 2xx
        ("/status/302", (200, 399), True),
        ("/status/404", (200, 299), False),
        ("/status/404", (404, 404), True),
        ("/status/500", (200, 599), True),
        ("/status/503", (200, 499), False),
    ],
)
async def test_status_range_decides(
    service: tuple[str, list[tuple[str, str]]], path: str, status: tuple[int, int], passes: bool
) -> None:
    url, asked = service
    check = HealthConfig(path=path, status=status)
    async with aiohttp.ClientSession() as session:
        assert await probe(session, url, 2.0, check) is passes
    assert asked == [("GET", path)]


async def test_method_and_path_are_the_configured_ones(
    service: tuple[str, list[tuple[str, str]]],
) -> None:
    url, asked = service
    async with aiohttp.ClientSession() as session:
        assert await probe(session, url, 2.0, HealthConfig(path="/status/200?x=1", method="HEAD"))
        # "/" answers GET only: HEAD gets 405, so the same path fails with HEAD.
        assert await probe(session, url, 2.0, HealthConfig(path="/"))
        assert not await probe(session, url, 2.0, HealthConfig(path="/", method="HEAD"))
    assert asked == [("HEAD", "/status/200?x=1"), ("GET", "/")]


async def test_wait_ready_uses_the_check(service: tuple[str, list[tuple[str, str]]]) -> None:
    url, asked = service
    async with aiohttp.ClientSession() as session:
        ready = await wait_ready(
            session,
            url,
            rise=2,
            timeout=5.0,
            check_timeout=1.0,
            dead=lambda: False,
            poll=0.0,
            check=HealthConfig(path="/status/204", method="HEAD"),
        )
    assert ready
    assert asked == [("HEAD", "/status/204")] * 2


@pytest.mark.lbconfig(
    health=HealthConfig(
        interval=0.05, timeout=0.5, path="/_t/status/204", method="HEAD", status=(204, 204)
    )
)
async def test_balancer_heartbeats_the_configured_path(lb: BalancerUnderTest) -> None:
    # Only 204 passes, which /heartbeat (200) would not give: the replicas came up and
    # stay up only because the configured path and method are the ones asked.
    monitor = lb.balancer.monitor
    rounds = monitor.rounds
    await wait_for(lambda: monitor.rounds >= rounds + 3)
    assert monitor.failures == 0
    assert len(lb.balancer.pool.names()) == 3
