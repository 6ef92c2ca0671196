"""WebSocket through the balancer: 101, then a byte tunnel both ways (HAProxy, NGINX,
Envoy and Traefik all tunnel upgrades). Uses aiohttp's WebSocket client against the stock
replica's ``/ws`` echo. Run: ``.venv/bin/python -m pytest tests/test_websocket.py -v``."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from lbproxy.config import ProxyConfig
from tests.conformance_kit import Stall, get, rig
from tests.conftest import BalancerUnderTest, wait_for

pytestmark = pytest.mark.inprocess


async def test_websocket_echo_through_the_balancer(lb: BalancerUnderTest) -> None:
    pool = lb.balancer.pool
    owner = pool.owner("246810")
    async with lb.client.ws_connect(lb.url + "/ws", headers={"X-Request-ID": "246810"}) as ws:
        await ws.send_str("hello")
        assert (await ws.receive_str()) == "hello"
        # the upgrade request's key picked the replica; the tunnel counts in flight
        assert owner.in_flight == 1
        big = bytes(range(256)) * 8192  # 2 MiB: flow control both ways
        await ws.send_bytes(big)
        assert (await ws.receive_bytes()) == big
        for i in range(50):
            await ws.send_str(f"m{i}")
        for i in range(50):
            assert (await ws.receive_str()) == f"m{i}"
    await wait_for(lambda: owner.in_flight == 0)
    assert lb.balancer.stats.upstream_errors == {}
    status, _ = await lb.get_json("/home")  # the balancer carries on
    assert status == 200


@pytest.mark.lbconfig(proxy=ProxyConfig(idle_timeout=0.3))
async def test_idle_tunnel_is_closed(lb: BalancerUnderTest) -> None:
    async with lb.client.ws_connect(lb.url + "/ws") as ws:
        await ws.send_str("x")
        assert (await ws.receive_str()) == "x"
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await wait_for(lambda: all(r.in_flight == 0 for r in lb.balancer.pool.replicas()))


async def test_upgrade_refused_by_the_replica_is_relayed_and_kept() -> None:
    """No 101: the answer is relayed as an ordinary one and the connection reads on
    (RFC 9110 7.8; tests/test_conformance.py has the pipelined case and HAProxy's)."""
    async with rig() as r:
        c = await r.client()
        resp = await c.request(get("/ok", "a", "Connection: Upgrade", "Upgrade: websocket"))
        assert resp.status == 200 and resp.tag == b"a"
        assert resp.one("Connection") != b"close"
        (seen,) = r.upstream.requests()
        assert seen.header(b"upgrade") == [b"websocket"]
        assert (await c.request(get("/ok", "b"))).tag == b"b"


async def test_unasked_101_is_a_502() -> None:
    script = [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n"]
    async with rig({"sw": script}) as r:
        c = await r.client()
        resp = await c.request(get("/s/sw", "a"))
        assert resp.status == 502
        await r.next_client_is_served()


async def test_connect_is_501() -> None:
    async with rig() as r:
        c = await r.client()
        resp = await c.request(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test\r\n\r\n")
        assert resp.status == 501


async def test_tunnel_is_counted_and_drained_with_a_bound() -> None:
    switch = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"server-hello"
    )
    async with rig({"ws": [switch, Stall()]}) as r:
        front = r.server.frontend
        assert front is not None
        c = await r.client()
        c.send(get("/s/ws", "a", "Connection: Upgrade", "Upgrade: websocket") + b"early")
        head = await c.read_head()
        assert head.status == 101 and head.one("Upgrade") == b"websocket"
        assert await c.reader.readexactly(12) == b"server-hello"
        await wait_for(lambda: r.upstream.raw.endswith(b"early"))  # held, then relayed
        assert front.in_flight == 1
        await asyncio.wait_for(front.drain(0.2), 5)
        assert await c.at_eof()
        assert front.in_flight == 0
