"""The front-end's HTTP edge cases over real sockets: framing, limits, timeouts, retries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
import pytest

from lbproxy.config import HealthConfig, ProxyConfig
from lbproxy.control.pool import ReplicaState
from tests.conftest import (
    BalancerUnderTest,
    InProcessBackend,
    fast_config,
    start_balancer,
    wait_for,
)

pytestmark = pytest.mark.inprocess


async def raw(lb: BalancerUnderTest, data: bytes, *, wait: float = 2.0) -> bytes:
    """Send raw bytes, read until the balancer closes or ``wait`` passes without data."""
    parts = urlsplit(lb.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), wait)
            if not chunk:
                break
            out += chunk
    except TimeoutError:
        pass
    writer.close()
    return out


async def test_body_and_headers_are_forwarded_without_hop_by_hop(lb: BalancerUnderTest) -> None:
    headers = {
        "X-Request-ID": "123456",
        "Connection": "keep-alive, X-Secret",
        "X-Secret": "hop",
        "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic eA==",
        "X-Custom": "kept",
    }
    async with lb.client.post(lb.url + "/_t/echo?a=1&b=2", data=b"y" * 5000, headers=headers) as r:
        assert r.status == 200
        assert r.headers["X-Request-ID"] == "123456"
        echo = await r.json()
    assert echo["method"] == "POST" and echo["path"] == "/_t/echo?a=1&b=2"
    assert echo["body_len"] == 5000
    sent = {k.lower(): v for k, v in echo["headers"].items()}
    assert sent["x-custom"] == "kept" and sent["x-request-id"] == "123456"
    for hop in ("x-secret", "keep-alive", "proxy-authorization"):
        assert hop not in sent


async def test_response_hop_by_hop_headers_are_dropped(lb: BalancerUnderTest) -> None:
    async with lb.client.get(lb.url + "/_t/hop") as r:
        assert r.status == 200 and await r.text() == "hop"
        assert "X-Hop" not in r.headers and "X-Request-ID" in r.headers


async def test_chunked_request_body_is_streamed(lb: BalancerUnderTest) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"z" * 10_000

    async with lb.client.put(lb.url + "/_t/echo", data=body()) as r:
        assert r.status == 200
        echo = await r.json()
    assert echo["body_len"] == 200_000 and echo["method"] == "PUT"


async def test_large_chunked_response_streams_whole(lb: BalancerUnderTest) -> None:
    async with lb.client.get(lb.url + "/_t/stream?size=5000000") as r:
        assert r.status == 200
        assert r.headers["X-Stream"] == "yes" and "X-Request-ID" in r.headers
        total = 0
        async for chunk in r.content.iter_any():
            total += len(chunk)
    assert total == 5_000_000


async def test_head_then_get_on_one_connection(lb: BalancerUnderTest) -> None:
    out = await raw(
        lb,
        b"HEAD /home HTTP/1.1\r\nHost: x\r\nX-Request-ID: 111111\r\n\r\n"
        b"GET /home HTTP/1.1\r\nHost: x\r\nX-Request-ID: 111111\r\nConnection: close\r\n\r\n",
    )
    assert out.count(b"HTTP/1.1 200") == 2
    assert out.count(b"Hello from Server") == 1  # the HEAD answer has no body


async def test_pipelined_requests_answer_in_order(lb: BalancerUnderTest) -> None:
    reqs = (
        b"".join(b"GET /_t/echo?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
        + b"GET /_t/echo?n=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    out = await raw(lb, reqs)
    positions = [out.find(b'"/_t/echo?n=%d"' % i) for i in range(6)]
    assert all(p > 0 for p in positions) and positions == sorted(positions)


async def test_http10_without_host_is_answered_and_closed(lb: BalancerUnderTest) -> None:
    out = await raw(lb, b"GET /home HTTP/1.0\r\n\r\n", wait=3)
    assert out.startswith(b"HTTP/1.1 200") and b"Hello from Server" in out


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NONSENSE\r\n\r\n", b"400"),
        (b"GET /home HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
        (b"POST /home HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", b"413"),
        (b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test\r\n\r\n", b"501"),
    ],
    ids=["malformed", "head too large", "body too large", "connect"],
)
async def test_refused_requests_get_json_errors(
    lb: BalancerUnderTest, request_bytes: bytes, status: bytes
) -> None:
    out = await raw(lb, request_bytes)
    assert out.startswith(b"HTTP/1.1 " + status), out[:200]
    body = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert body["status"] == "failure" and body["message"].startswith("<Error> ")
    status_code, rep = await lb.get_json("/rep")  # the balancer is unharmed
    assert status_code == 200 and rep["message"]["N"] == 3  # type: ignore[index]


@pytest.mark.lbconfig(proxy=ProxyConfig(header_timeout=0.3))
async def test_slow_header_client_is_cut_off(lb: BalancerUnderTest) -> None:
    out = await raw(lb, b"GET /home HTTP/1.1\r\nHost: x\r\nX-Slow: ", wait=5)
    assert out.startswith(b"HTTP/1.1 408")


@pytest.mark.lbconfig(proxy=ProxyConfig(read_timeout=0.3))
async def test_silent_replica_gives_504(lb: BalancerUnderTest) -> None:
    async with lb.client.get(lb.url + "/_t/slow?s=3") as r:
        assert r.status == 504
        assert (await r.json())["status"] == "failure"


async def test_expect_continue_gets_interim_answer(lb: BalancerUnderTest) -> None:
    out = await raw(
        lb,
        b"POST /_t/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\nabc",
    )
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")
    assert b'"body_len": 3' in out


async def test_post_is_retried_when_nothing_was_sent(lb: BalancerUnderTest) -> None:
    """A dead replica refuses the connection: the POST goes to the next one, unharmed."""
    owner = lb.balancer.pool.owner("424242").name
    entry = lb.backend.live(owner)
    lb.backend.running.pop(entry.handle.backend_id)
    await entry.runner.cleanup()  # gone, and nobody told the balancer
    lb.balancer.monitor  # noqa: B018 - the heartbeat will notice later; we are faster
    async with lb.client.post(
        lb.url + "/_t/echo", data=b"payload", headers={"X-Request-ID": "424242"}
    ) as r:
        assert r.status == 200
        echo = await r.json()
    assert echo["replica"] != owner and echo["body_len"] == 7


@pytest.mark.lbconfig(proxy=ProxyConfig(eject_after=3, eject_base_time=0.3))
async def test_failing_replica_is_ejected_then_readmitted(lb: BalancerUnderTest) -> None:
    pool = lb.balancer.pool
    owner = pool.owner("777777")
    for _ in range(3):
        async with lb.client.get(
            lb.url + "/_t/status/500", headers={"X-Request-ID": "777777"}
        ) as r:
            assert r.status == 500  # a replica's 5xx reaches the client unchanged
    assert owner.state is ReplicaState.EJECTED
    assert owner.name not in pool.ring.names
    # its heartbeat still passes, so the monitor puts it back once the ejection time is over
    # (Envoy's base_ejection_time; heartbeats every 50 ms readmit nothing before that)
    await wait_for(lambda: owner.state is ReplicaState.UP)
    assert owner.name in pool.ring.names and owner.ejections == 1


async def test_client_leaving_mid_stream_frees_everything(lb: BalancerUnderTest) -> None:
    parts = urlsplit(lb.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(b"GET /_t/stream?size=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.read(100_000)
    writer.transport.abort()
    await wait_for(lambda: all(r.in_flight == 0 for r in lb.balancer.pool.replicas()))
    status, _ = await lb.get_json("/rep")
    assert status == 200


async def test_unknown_balancer_endpoint_is_a_json_404(lb: BalancerUnderTest) -> None:
    status, body = await lb.get_json("/lbproxy/nope")
    assert status == 404
    assert body == {
        "message": "<Error> '/lbproxy/nope' is not an endpoint of the balancer",
        "status": "failure",
    }


def delay_seconds(value: str) -> int:
    """RFC 9110 10.2.3: ``Retry-After`` as delay-seconds (1*DIGIT), here at least 1."""
    assert value.isascii() and value.isdigit(), value
    assert int(value) >= 1, value
    return int(value)


@pytest.mark.parametrize(
    ("interval", "rise", "expected"),
    [(0.05, 1, 1), (2.5, 1, 3), (0.6, 3, 2)],
    ids=["under-a-second", "rounded-up", "rise-heartbeats"],
)
async def test_no_replica_on_the_ring_is_a_503_with_retry_after_of_the_heartbeats(
    interval: float, rise: int, expected: int
) -> None:
    """RFC 9110 15.6.4: a 503 may say when to come back (10.2.3). With nobody on the ring
    the soonest a replica can be up is ``--rise`` passed heartbeats, ``--heartbeat-interval``
    apart: that rounded up to whole seconds, at least 1 (GET and HEAD alike)."""
    health = HealthConfig(interval=interval, timeout=0.2, fall=2, rise=rise)
    backend = InProcessBackend()
    server = await start_balancer(fast_config(replicas=0, health=health), backend)
    try:
        async with aiohttp.ClientSession() as client:
            for method in ("GET", "HEAD"):
                async with client.request(method, server.url + "/home") as r:
                    assert r.status == 503
                    assert delay_seconds(r.headers["Retry-After"]) == expected
                    if method == "GET":
                        assert await r.json() == {
                            "message": "<Error> no replica is available",
                            "status": "failure",
                        }
    finally:
        await server.stop()


async def test_every_replica_down_is_a_503_with_retry_after(
    lb: BalancerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ring still names replicas but none of them is up (the ring in use lags the
    pool): the same 503 and the same Retry-After as an empty ring."""
    monkeypatch.setattr(lb.balancer.pool, "pick", lambda key: iter(()))
    async with lb.client.get(lb.url + "/home") as r:
        assert r.status == 503
        assert delay_seconds(r.headers["Retry-After"]) == 1  # 50 ms heartbeats, rise 1
        body = await r.json()
    assert body == {"message": "<Error> no replica could take the request", "status": "failure"}


async def test_answers_that_are_not_503_carry_no_retry_after(lb: BalancerUnderTest) -> None:
    """Only the 503s say when to come back: a 404 of the balancer's own does not."""
    async with lb.client.get(lb.url + "/lbproxy/nope") as r:
        assert r.status == 404
        assert "Retry-After" not in r.headers
