"""In-flight counters settle exactly once on every ending (issue 9): drain and
``--bounded-load`` trust them."""

from __future__ import annotations

import asyncio

import pytest

from lbproxy.config import ProxyConfig
from tests.conformance_kit import Stall, answer, get, rig
from tests.conftest import wait_for

pytestmark = pytest.mark.inprocess


async def test_client_leaving_during_a_failing_connect_settles_once() -> None:
    """The client leaves while the connect is pending; the connect then fails."""
    async with rig(proxy=ProxyConfig(read_timeout=3.0, retries=0)) as r:
        front = r.server.frontend
        assert front is not None
        replica = next(iter(r.server.balancer.pool.replicas()))
        upstream = r.upstream
        assert upstream.server is not None
        upstream.server.close()  # new connections are refused from now on
        for conn in list(upstream.conns):
            assert conn.transport is not None
            conn.transport.abort()
        front.upstreams.close_idle()
        c = await r.client()
        c.send(get("/ok", "a"))
        c.close()
        await wait_for(lambda: not front.clients)
        await wait_for(lambda: front.in_flight == 0 and replica.in_flight == 0)
        assert replica.in_flight == 0 and front.in_flight == 0


async def test_large_non_replayable_body_failure_settles_once() -> None:
    """A body over the replay limit, the replica resets mid-upload: one decrement."""
    from tests.conformance_kit import Await, Reset

    async with rig(early={"rst": [Await(1000), Reset()]}) as r:
        front = r.server.frontend
        assert front is not None
        replica = next(iter(r.server.balancer.pool.replicas()))
        c = await r.client()
        size = 3 * 1024 * 1024
        c.send(
            b"POST /s/rst HTTP/1.1\r\nHost: lb.test\r\nX-Tag: a\r\nContent-Length: %d\r\n\r\n"
            % size
        )
        c.send(b"x" * size)
        _, resp = await c.read_response()
        assert resp.status == 502
        await wait_for(lambda: front.in_flight == 0)
        assert replica.in_flight == 0


async def test_pipelined_requests_of_a_client_that_leaves_leak_nothing() -> None:
    gate = Stall()
    async with rig({"stall": [gate, answer(200, b"late")]}) as r:
        front = r.server.frontend
        assert front is not None
        replica = next(iter(r.server.balancer.pool.replicas()))
        c = await r.client()
        c.send(get("/s/stall", "a") + get("/ok", "b") + get("/ok", "c"))
        await r.upstream.stalled.wait()
        gate.event.set()
        c.close()  # leaves just as its first answer arrives and the next begin() is queued
        await wait_for(lambda: not front.clients)
        await asyncio.sleep(0)  # let a call_soon(begin) of a dead exchange run
        await wait_for(lambda: front.in_flight == 0 and replica.in_flight == 0)
        await r.next_client_is_served()
        assert front.in_flight == 0 and replica.in_flight == 0
