"""HTTP/1.1 conformance of the relay, case by case, against a scripted upstream.

Each case feeds the balancer what a client or a replica can really send and checks the
client gets exactly its own answer, well framed, and that the next client (on the same
pooled upstream connection) still does: the desyncs issue 9 found. Run the suite with
``.venv/bin/python -m pytest tests/test_conformance.py -v``; docs/conformance.md has the
table of cases, before and after.
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from lbproxy.frontend.relay import MAX_PIPELINE
from tests.conformance_kit import Close, Reset, Stall, Target, answer, get, haproxy_binary
from tests.conformance_kit import target as make_target
from tests.conftest import wait_for

pytestmark = pytest.mark.inprocess

#: Where the cases' inputs go: lbproxy by default; bench/conformance_vs_haproxy.py sets
#: ``lbproxy,haproxy`` to run each case through HAProxy too, in the same run.
TARGETS = [
    name.strip()
    for name in os.environ.get("LBPROXY_CONFORMANCE_TARGETS", "lbproxy").split(",")
    if name.strip()
]


@pytest.fixture(
    params=[
        name if name == "lbproxy" else pytest.param(name, marks=pytest.mark.process)
        for name in TARGETS
    ]
)
def target(request: pytest.FixtureRequest) -> Target:
    """The proxy this case's inputs go through (HAProxy as a separate process)."""
    if request.param == "haproxy" and haproxy_binary() is None:
        pytest.skip("haproxy is not installed (bench/install-tools.sh)")
    t = make_target(request.param)
    request.node.user_properties.append(("trace", t.trace))
    return t


def lbproxy_only(target: Target, why: str) -> None:
    """Skip a case that drives lbproxy's internals on any other proxy."""
    if not target.is_lbproxy:
        pytest.skip(f"lbproxy-only: {why}")


SMUGGLED = b"GET /s/smuggled HTTP/1.1\r\nHost: lb.test\r\nX-Tag: evil\r\n\r\n"


# -- critical: Connection naming framing fields or Host (RFC 9110 7.6.1, RFC 9112 6) -----------


@pytest.mark.parametrize("token", ["Content-Length", "content-length, keep-alive"])
async def test_connection_naming_content_length_is_400_and_nothing_smuggled(
    target: Target, token: str
) -> None:
    async with target.rig() as r:
        c = await r.client()
        req = (
            f"POST /ok HTTP/1.1\r\nHost: lb.test\r\nX-Tag: a\r\nConnection: keep-alive, {token}"
            f"\r\nContent-Length: {len(SMUGGLED)}\r\n\r\n"
        ).encode() + SMUGGLED
        resp = await c.request(req)
        assert resp.status == 400
        assert all(s.path != b"/s/smuggled" for s in r.upstream.requests())
        await r.next_client_is_served()
        assert all(s.path != b"/s/smuggled" for s in r.upstream.requests())


async def test_connection_naming_transfer_encoding_is_400(target: Target) -> None:
    async with target.rig() as r:
        c = await r.client()
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
        req = (
            b"POST /ok HTTP/1.1\r\nHost: lb.test\r\nX-Tag: a\r\n"
            b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n" + body
        )
        resp = await c.request(req)
        assert resp.status == 400
        await r.next_client_is_served()
        assert all(s.path != b"/s/smuggled" for s in r.upstream.requests())


async def test_connection_naming_host_is_400_never_hostless(target: Target) -> None:
    async with target.rig() as r:
        c = await r.client()
        resp = await c.request(get("/ok", "a", "Connection: Host"))
        assert resp.status == 400
        assert all(s.header(b"host") for s in r.upstream.requests())
        await r.next_client_is_served()


# -- critical: upstream 1xx (RFC 9110 15.2) ---------------------------------------------------

EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"


async def test_103_early_hints_is_forwarded_then_the_final_answer(target: Target) -> None:
    async with target.rig({"hints": [EARLY_HINTS, answer(200, b"final")]}) as r:
        c = await r.client()
        c.send(get("/s/hints", "a"))
        interims, resp = await c.read_response()
        assert [i.status for i in interims] == [103]
        assert interims[0].one("Link") == b"</style.css>; rel=preload"
        assert resp.status == 200 and resp.tag == b"a" and resp.body == b"final"
        # the same client connection and the next client stay in step
        assert (await c.request(get("/ok", "a2"))).tag == b"a2"
        await r.next_client_is_served()


async def test_1xx_sent_in_separate_packets_never_ends_the_exchange(target: Target) -> None:
    gate = Stall()
    async with target.rig({"slow-hints": [EARLY_HINTS, gate, answer(200, b"final")]}) as r:
        c = await r.client()
        c.send(get("/s/slow-hints", "a"))
        first = await c.read_head()
        assert first.status == 103
        gate.event.set()
        _, resp = await c.read_response()
        assert resp.status == 200 and resp.tag == b"a"
        await r.next_client_is_served()


async def test_102_and_several_1xx_before_the_final_answer(target: Target) -> None:
    script = [
        b"HTTP/1.1 102 Processing\r\n\r\n",
        EARLY_HINTS,
        EARLY_HINTS,
        answer(201, b"made", reason="Created"),
    ]
    async with target.rig({"many": script}) as r:
        c = await r.client()
        c.send(get("/s/many", "a"))
        interims, resp = await c.read_response()
        assert [i.status for i in interims] == [102, 103, 103]
        assert resp.status == 201 and resp.tag == b"a"
        await r.next_client_is_served()


async def test_unasked_100_continue_is_dropped(target: Target) -> None:
    """The balancer answers Expect itself, so a replica's 100 is never one the client asked
    for through us: dropped, and the final answer still reaches the right client."""
    async with target.rig({"cont": [b"HTTP/1.1 100 Continue\r\n\r\n", answer(200, b"final")]}) as r:
        c = await r.client()
        c.send(get("/s/cont", "a"))
        interims, resp = await c.read_response()
        assert interims == [] and resp.status == 200 and resp.tag == b"a"
        await r.next_client_is_served()


async def test_1xx_is_not_sent_to_an_http10_client(target: Target) -> None:
    """RFC 9110 15.2: a server MUST NOT send a 1xx response to an HTTP/1.0 client."""
    async with target.rig({"hints": [EARLY_HINTS, answer(200, b"final")]}) as r:
        c = await r.client()
        c.send(get("/s/hints", "a", version="1.0"))
        interims, resp = await c.read_response()
        assert interims == [] and resp.status == 200 and resp.body == b"final"
        await r.next_client_is_served()


# -- high: bodiless answers (RFC 9112 6.3) ---------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 304 Not Modified\r\nX-Answer: {tag}\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nX-Answer: {tag}\r\nContent-Length: 120\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nX-Answer: {tag}\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nX-Answer: {tag}\r\n\r\n",
    ],
    ids=["304-chunked", "304-length", "204-chunked", "204-plain"],
)
async def test_bodiless_answers_keep_the_connection_in_step(target: Target, head: bytes) -> None:
    async with target.rig({"bodiless": [head]}) as r:
        c = await r.client()
        resp = await c.request(get("/s/bodiless", "a"))
        assert resp.status in (204, 304) and resp.tag == b"a"
        if resp.status == 204:  # RFC 9112 6.1: never in a 204; a 304 MAY say what GET had
            assert not resp.header("Transfer-Encoding")
        # a stray 0\r\n\r\n would be read here instead of the next status line
        nxt = await c.request(get("/ok", "a2"))
        assert nxt.status == 200 and nxt.tag == b"a2"
        await r.next_client_is_served()


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nX-Answer: {tag}\r\nContent-Length: 1234\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Answer: {tag}\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Answer: {tag}\r\n\r\n",
    ],
    ids=["length", "chunked", "unframed"],
)
async def test_head_answers_have_no_body_and_keep_step(target: Target, head: bytes) -> None:
    async with target.rig({"head": [head]}) as r:
        c = await r.client()
        resp = await c.request(get("/s/head", "a", method="HEAD"), method=b"HEAD")
        assert resp.status == 200 and resp.tag == b"a"
        if b"1234" in head:
            assert resp.one("Content-Length") == b"1234"  # metadata of a HEAD answer
        nxt = await c.request(get("/ok", "a2"))
        assert nxt.status == 200 and nxt.tag == b"a2"
        await r.next_client_is_served()
        # RFC 9110 9.3.2, RFC 9112 6.3: the answer ended at its head; the upstream
        # connection is as reusable as after any other answer (HAProxy reuses it)
        assert r.upstream.data_connections() == 1, "the HEAD answer's connection was closed"


@pytest.mark.parametrize(
    "extra",
    [
        b"stale",  # a body sent to a HEAD (its Content-Length: 5)
        b"stale" + answer(200, b"stale").replace(b"{tag}", b"stale"),
    ],
    ids=["body", "body-and-answer"],
)
async def test_bytes_after_a_head_answer_never_reach_the_next_client(
    target: Target, extra: bytes
) -> None:
    """The connection a HEAD answer leaves reusable must not carry what a broken replica
    sent after it (a body to a HEAD) to the next client."""
    head = b"HTTP/1.1 200 OK\r\nX-Answer: {tag}\r\nContent-Length: 5\r\n\r\n"
    async with target.rig({"head": [head + extra]}) as r:
        c = await r.client()
        resp = await c.request(get("/s/head", "a", method="HEAD"), method=b"HEAD")
        assert resp.status == 200 and resp.tag == b"a"
        nxt = await c.request(get("/ok", "a2"))
        assert nxt.status == 200 and nxt.tag == b"a2" and nxt.body == b"ok"
        for i in range(3):
            await r.next_client_is_served(f"next{i}")


async def test_head_on_a_missing_path_is_answered_at_once(target: Target) -> None:
    async with target.rig() as r:
        c = await r.client()
        resp = await c.request(get("/s/missing", "a", method="HEAD"), method=b"HEAD")
        assert resp.status == 400  # SPEC: the replicas' 404 becomes the balancer's 400
        nxt = await c.request(get("/ok", "a2"))
        assert nxt.status == 200 and nxt.tag == b"a2"
        assert r.upstream.data_connections() == 1, "the HEAD answer's connection was closed"


# -- high: h2c offers are ignored (RFC 9110 7.8, RFC 9113 3.1) ---------------------------------

H2C = ("Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAAP__")


async def test_h2c_offer_is_ignored(target: Target) -> None:
    async with target.rig() as r:
        c = await r.client()
        resp = await c.request(get("/ok", "a", *H2C))
        assert resp.status == 200 and resp.tag == b"a"
        (seen,) = r.upstream.requests()
        assert not seen.header(b"upgrade") and not seen.header(b"http2-settings")
        nxt = await c.request(get("/ok", "a2"))
        assert nxt.status == 200 and nxt.tag == b"a2"


async def test_h2c_offer_with_a_body_forwards_the_body(target: Target) -> None:
    async with target.rig({"echo": lambda s: [answer(200, s.body)]}) as r:
        c = await r.client()
        req = (
            "POST /s/echo HTTP/1.1\r\nHost: lb.test\r\nX-Tag: a\r\n" + "\r\n".join(H2C) + "\r\n"
            "Content-Length: 5\r\n\r\nhello"
        ).encode()
        resp = await c.request(req)
        assert resp.status == 200 and resp.body == b"hello"
        nxt = await c.request(get("/ok", "a2"))
        assert nxt.status == 200 and nxt.tag == b"a2"


# -- an upgrade the replica refuses (RFC 9110 7.8) --------------------------------------------


@pytest.mark.parametrize("pipelined", [False, True], ids=["alone", "pipelined"])
async def test_upgrade_refused_by_the_replica_keeps_the_connection(
    target: Target, pipelined: bool
) -> None:
    """RFC 9110 7.8: a server MAY ignore Upgrade; a final answer other than 101 is an
    ordinary response, so the client connection (and the upstream one) stay usable,
    including for a request the client sent right behind the offer."""
    async with target.rig() as r:
        c = await r.client()
        offer = get(
            "/ok",
            "a",
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",  # HAProxy 400s an offer without
            "Sec-WebSocket-Version: 13",
        )
        c.send(offer + (get("/ok", "a2") if pipelined else b""))
        _, resp = await c.read_response()
        assert resp.status == 200 and resp.tag == b"a"
        assert resp.one("Connection") != b"close", "the refused upgrade closed the connection"
        if pipelined:
            _, resp = await c.read_response()
            assert resp.status == 200 and resp.tag == b"a2"
        nxt = await c.request(get("/ok", "a3"))
        assert nxt.status == 200 and nxt.tag == b"a3"
        assert r.upstream.data_connections() == 1


# -- high: a client that stops reading must not leave a paused pooled connection ---------------


async def test_client_that_stops_reading_leaves_no_paused_upstream(target: Target) -> None:
    """Client A reads nothing; the response that pushes A's buffer over its high-water mark
    ends in the same read: the upstream connection must go back to the pool reading."""
    lbproxy_only(target, "sets lbproxy's transport buffer limits to fill them")
    big = b"x" * 1_000_000
    async with target.rig({"fill": [answer(200, big)], "small": [answer(200, b"y" * 20_000)]}) as r:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.setblocking(False)
        await asyncio.get_running_loop().sock_connect(raw, (r.host, r.port))
        reader, writer = await asyncio.open_connection(sock=raw)
        front = r.lbproxy.frontend
        assert front is not None
        await wait_for(lambda: len(front.clients) == 1)
        (client_a,) = front.clients
        transport = client_a.transport
        assert transport is not None
        # small fixed kernel buffers: the answers pile up in the transport, as for a slow
        # client on a real network
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.set_write_buffer_limits(high=64 * 1024 * 1024)
        writer.write(get("/s/fill", "a"))
        replica = next(iter(r.lbproxy.balancer.pool.replicas()))
        await wait_for(lambda: replica.served == 1)
        # the whole 1 MB answer sits in A's buffers; one more answer crosses the mark
        transport.set_write_buffer_limits(high=transport.get_write_buffer_size() + 1000)
        writer.write(get("/s/small", "a2"))
        await wait_for(lambda: replica.served == 2)
        await r.next_client_is_served()
        writer.transport.abort()
        del reader


# -- framing from the upstream: reset, close-delimited, junk ----------------------------------


async def test_close_delimited_answer_is_relayed_whole(target: Target) -> None:
    script = [b"HTTP/1.1 200 OK\r\nX-Answer: {tag}\r\n\r\npart one, ", b"part two", Close()]
    async with target.rig({"eof": script}) as r:
        c = await r.client()
        resp = await c.request(get("/s/eof", "a"))
        assert resp.status == 200 and resp.body == b"part one, part two"
        assert resp.ended in ("chunked", "close")
        await r.next_client_is_served()


async def test_reset_of_close_delimited_answer_is_not_relayed_as_complete(target: Target) -> None:
    gate = Stall()
    script = [b"HTTP/1.1 200 OK\r\nX-Answer: {tag}\r\n\r\npartial", gate, Reset()]
    async with target.rig({"rst": script}) as r:
        c = await r.client()
        c.send(get("/s/rst", "a"))
        head = await c.read_head()
        assert head.status == 200
        await r.upstream.stalled.wait()
        gate.event.set()
        resp = await c.read_response_body(head)
        assert resp.ended in ("truncated", "reset"), resp.ended
        await r.next_client_is_served()


async def test_junk_after_an_answer_never_reaches_the_next_client(target: Target) -> None:
    junk = b"HTTP/1.1 200 OK\r\nX-Answer: stale\r\nContent-Length: 5\r\n\r\nstale"
    async with target.rig({"junk": [answer(200, b"mine") + junk]}) as r:
        c = await r.client()
        resp = await c.request(get("/s/junk", "a"))
        assert resp.status == 200 and resp.body == b"mine"
        for i in range(3):
            await r.next_client_is_served(f"next{i}")


async def test_junk_after_an_answer_never_reaches_a_queued_client(target: Target) -> None:
    """With the replica's connection cap reached, a client waits for the connection in
    use; the junk its replica sent after the answer (same read) must not become that
    waiting client's answer. (lbproxy handed the connection over inside the parser's
    callback, before the rest of the read was parsed.)"""
    lbproxy_only(target, "sets --max-conns-per-replica 1 and waits on lbproxy's queue")
    gate = Stall()
    junk = b"HTTP/1.1 200 OK\r\nX-Answer: stale\r\nContent-Length: 5\r\n\r\nstale"
    async with target.rig({"junk": [gate, answer(200, b"mine") + junk]}, max_conns=1) as r:
        a = await r.client()
        a.send(get("/s/junk", "a"))
        await r.upstream.stalled.wait()
        b = await r.client()
        b.send(get("/ok", "b"))
        front = r.lbproxy.frontend
        assert front is not None
        await wait_for(lambda: front.upstreams.waiting() == 1)
        gate.event.set()
        _, resp = await a.read_response()
        assert resp.status == 200 and resp.body == b"mine"
        _, resp = await b.read_response()
        assert resp.tag == b"b" and resp.body == b"ok", (resp.tag, resp.body)


async def test_truncated_length_answer_is_cut_not_completed(target: Target) -> None:
    gate = Stall()
    script = [
        b"HTTP/1.1 200 OK\r\nX-Answer: {tag}\r\nContent-Length: 100\r\n\r\nshort",
        gate,
        Close(),
    ]
    async with target.rig({"cut": script}) as r:
        c = await r.client()
        c.send(get("/s/cut", "a"))
        head = await c.read_head()
        await r.upstream.stalled.wait()
        gate.event.set()
        resp = await c.read_response_body(head)
        assert resp.ended in ("truncated", "reset")
        await r.next_client_is_served()


@pytest.mark.parametrize("timeout", [0.3])
async def test_stalled_replica_gets_504_and_next_client_is_fine(
    target: Target, timeout: float
) -> None:
    gate = Stall()
    async with target.rig({"stall": [gate]}, read_timeout=timeout) as r:
        c = await r.client()
        resp = await c.request(get("/s/stall", "a"))
        assert resp.status == 504
        gate.event.set()
        await r.next_client_is_served()


# -- medium and low (issue 9's list) ----------------------------------------------------------


async def test_http10_client_gets_a_close_delimited_body(target: Target) -> None:
    """RFC 9112 7: chunked only to HTTP/1.1; a 1.0 client reads until close."""
    chunked = b"HTTP/1.1 200 OK\r\nX-Answer: {tag}\r\nTransfer-Encoding: chunked\r\n\r\n"
    script = [chunked + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"]
    async with target.rig({"chunked": script}) as r:
        c = await r.client()
        resp = await c.request(get("/s/chunked", "a", version="1.0"))
        assert resp.status == 200 and resp.body == b"hello world" and resp.ended == "close"
        assert not resp.header("Transfer-Encoding")
        await r.next_client_is_served()


async def test_slow_upload_is_not_a_read_timeout(target: Target) -> None:
    """The read timeout measures the replica's silence after the request (HAProxy's
    ``timeout server`` starts when the request is sent), not the client's upload."""
    async with target.rig(
        {"echo": lambda s: [answer(200, b"%d" % len(s.body))]},
        read_timeout=0.3,
    ) as r:
        c = await r.client()
        c.send(
            b"POST /s/echo HTTP/1.1\r\nHost: lb.test\r\nX-Tag: a\r\nContent-Length: 6\r\n\r\nabc"
        )
        # wait through two read timeouts' worth of sweeps while the body is incomplete
        loop = asyncio.get_running_loop()
        start = loop.time()
        await wait_for(lambda: loop.time() - start > 0.8, interval=0.05)
        c.send(b"def")
        resp = (await c.read_response())[1]
        assert resp.status == 200 and resp.body == b"6"


async def test_valid_request_is_answered_before_the_400_for_junk_after_it(target: Target) -> None:
    async with target.rig() as r:
        c = await r.client()
        c.send(get("/ok", "a") + b"\x00\x01 junk\r\n\r\n")
        _, first = await c.read_response()
        assert first.status == 200 and first.tag == b"a"
        _, second = await c.read_response()
        assert second.status == 400
        assert await c.at_eof()


async def test_pipelining_is_bounded_for_a_client_that_reads_nothing(target: Target) -> None:
    """uvicorn's and aiohttp's rule: while requests wait behind the one being relayed,
    reading pauses once MAX_PIPELINE of them are queued. The first answer is held at the
    upstream, so the queue cannot drain before the pause is observed (no race with the
    relay answering everything first), and every answer then arrives in order. What one
    read already delivered is still parsed (httptools cannot stop mid-buffer), so the
    bound is on reads: the transport stops reading, which caps the queue at one read's worth."""
    gate = Stall()
    async with target.rig({"held": [gate, answer(200, b"first")]}) as r:
        c = await r.client()
        c.send(get("/s/held", "p0") + b"".join(get("/ok", f"p{i}") for i in range(1, 40)))
        if r.server is not None:  # lbproxy's own bound; another proxy: only the order
            front = r.lbproxy.frontend
            assert front is not None
            await wait_for(lambda: bool(front.clients) and bool(next(iter(front.clients)).paused))
            (client,) = front.clients
            assert len(client.queue) > MAX_PIPELINE
            assert client.transport is not None and not client.transport.is_reading()
        else:
            await r.upstream.stalled.wait()
        gate.event.set()
        for i in range(40):
            _, resp = await c.read_response()
            assert resp.tag == f"p{i}".encode()


@pytest.mark.parametrize(
    "extra",
    [(), ("Host: a.test", "Host: b.test")],
    ids=["missing-host", "two-hosts"],
)
async def test_host_must_be_exactly_one_on_http11(target: Target, extra: tuple[str, ...]) -> None:
    """RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host or
    with more than one."""
    async with target.rig() as r:
        c = await r.client()
        lines = ["GET /ok HTTP/1.1", "X-Tag: a", *extra]
        resp = await c.request(("\r\n".join(lines) + "\r\n\r\n").encode())
        assert resp.status == 400
        assert r.upstream.requests() == []


async def test_long_url_is_414(target: Target) -> None:
    async with target.rig() as r:
        c = await r.client()
        resp = await c.request(get("/ok?" + "q" * 70_000, "a"))
        assert resp.status == 414


async def test_bad_chunk_mid_body_is_400_and_nothing_is_left_upstream(target: Target) -> None:
    async with target.rig() as r:
        c = await r.client()
        c.send(
            b"POST /ok HTTP/1.1\r\nHost: lb.test\r\nX-Tag: a\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n3\r\nabc\r\nZZ\r\n"
        )
        _, resp = await c.read_response()
        assert resp.status == 400
        await r.next_client_is_served()


@pytest.mark.parametrize("cap", [1000])
async def test_chunked_body_over_the_limit_is_413(target: Target, cap: int) -> None:
    async with target.rig(max_body=cap) as r:
        c = await r.client()
        c.send(
            b"POST /ok HTTP/1.1\r\nHost: lb.test\r\nX-Tag: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (cap + 1, b"x" * (cap + 1))
        )
        _, resp = await c.read_response()
        assert resp.status == 413
        await r.next_client_is_served()


async def test_gzip_chunked_keeps_the_gzip_coding(target: Target) -> None:
    async with target.rig({"echo": lambda s: [answer(200, s.body)]}) as r:
        c = await r.client()
        resp = await c.request(
            b"POST /s/echo HTTP/1.1\r\nHost: lb.test\r\nX-Tag: a\r\n"
            b"Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        assert resp.status == 200
        (seen,) = r.upstream.requests()
        assert [v.lower() for v in seen.header(b"transfer-encoding")] == [b"gzip, chunked"]


async def test_extension_method_is_forwarded_or_501(target: Target) -> None:
    async with target.rig() as r:
        c = await r.client()
        resp = await c.request(get("/ok", "a", method="PROPFIND"))
        assert resp.status == 200 and r.upstream.requests()[0].method == b"PROPFIND"
        c2 = await r.client()
        resp = await c2.request(get("/ok", "b", method="BREW"))
        assert resp.status == 501


async def test_partial_junk_after_an_answer_never_reaches_the_next_client(target: Target) -> None:
    junk = b"HTTP/1.1 200 OK\r\nX-Answer: stale\r\nContent-Le"
    async with target.rig({"junk": [answer(200, b"mine") + junk]}) as r:
        c = await r.client()
        resp = await c.request(get("/s/junk", "a"))
        assert resp.status == 200 and resp.body == b"mine"
        for i in range(3):
            await r.next_client_is_served(f"next{i}")


async def test_long_request_id_is_refused(target: Target) -> None:
    async with target.rig() as r:
        c = await r.client()
        resp = await c.request(get("/ok", "a", "X-Request-ID: " + "7" * 5000))
        assert resp.status == 400
        assert len(b"".join(resp.header("X-Request-ID"))) <= 200


async def test_every_connection_field_is_honoured(target: Target) -> None:
    async with target.rig() as r:
        c = await r.client()
        resp = await c.request(
            get("/ok", "a", "Connection: X-One", "Connection: X-Two", "X-One: 1", "X-Two: 2")
        )
        assert resp.status == 200
        (seen,) = r.upstream.requests()
        assert not seen.header(b"x-one") and not seen.header(b"x-two")


async def test_reason_phrases_are_the_standard_ones(target: Target) -> None:
    async with target.rig() as r:
        c = await r.client()
        resp = await c.request(get("/ok", "b", method="BREW"))
        assert resp.status == 501 and resp.reason == b"Not Implemented"


# -- smuggling shapes the parser (llhttp, strict) already rejects: pinned so they stay so ----

SMUGGLING = {
    "cl-and-te": b"POST /ok HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-cl": b"POST /ok HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 5\r\n"
    b"\r\nabcde",
    "cl-plus-sign": b"POST /ok HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc",
    "te-not-last-chunked": b"POST /ok HTTP/1.1\r\nHost: h\r\n"
    b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "te-xchunked": b"POST /ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "space-before-colon": b"POST /ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n"
    b"0\r\n\r\n",
    "obs-fold": b"GET /ok HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  folded\r\n\r\n",
    "bare-lf-chunk": b"POST /ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\nabc\n0\n\n",
    "chunk-size-overflow": b"POST /ok HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"ffffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
    "nul-in-header": b"GET /ok HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(SMUGGLING.values()), ids=list(SMUGGLING))
async def test_smuggling_shapes_are_400_and_reach_no_replica(target: Target, raw: bytes) -> None:
    async with target.rig() as r:
        c = await r.client()
        c.send(raw + SMUGGLED)
        _, resp = await c.read_response()
        assert resp.status == 400
        assert all(s.path != b"/s/smuggled" for s in r.upstream.requests())
        await r.next_client_is_served()
        assert all(s.path != b"/s/smuggled" for s in r.upstream.requests())
