"""The public listener: parse each client request, pick a replica, relay the exchange.

Why not an aiohttp handler: profiling showed aiohttp's server and client machinery, not
our logic, took most of the balancer's CPU (docs/performance.md). Here a request is
parsed by llhttp (httptools), routed with one ring lookup and written on a pooled
keep-alive connection; the response streams back through parser callbacks. The common
path creates no task and no future. The balancer's own endpoints (/rep, /add, /rm,
/lbproxy/...) are relayed the same way to the control app (aiohttp) on a private unix
socket, so admin code stays ordinary aiohttp while the data path stays lean.

A request whose upstream connection fails before any response byte arrives is retried on
the next distinct replica on the ring (any method if nothing was sent; idempotent methods
if the request went out), so one replica's death is invisible to clients.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import cast

import httptools

from lbproxy.config import ProxyConfig
from lbproxy.control.pool import Pool, Replica
from lbproxy.errors import EmptyRingError, failure_body
from lbproxy.frontend.phases import (
    LOOP_LAG,
    M_ACQUIRED,
    M_BEGIN,
    M_DONE,
    M_HEAD,
    M_RESPONSE,
    M_STARTED,
    PhaseStats,
)
from lbproxy.frontend.routing_key import parse_key
from lbproxy.frontend.upstream import UpstreamConnection, UpstreamPool

log = logging.getLogger(__name__)

REQUEST_ID = "X-Request-ID"
_RID = b"x-request-id"

#: RFC 9110 7.6.1 hop-by-hop fields, never forwarded in either direction; plus the ones
#: this proxy sets itself (X-Request-ID, framing) or answers itself (Expect).
_SKIP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        _RID,
    }
)
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
RESERVED_EXACT = frozenset({b"/rep", b"/add", b"/rm"})
RESERVED_PREFIX = b"/lbproxy/"
#: Request bodies up to this size are kept so the request can be replayed elsewhere.
REPLAY_LIMIT = 1024 * 1024
#: Largest request line + headers accepted (431 beyond).
MAX_HEAD_BYTES = 64 * 1024
#: Latency histogram bucket bounds, seconds (Prometheus-style cumulative on export).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _connection_tokens(value: bytes) -> frozenset[bytes]:
    """Header names a Connection header declares hop-by-hop (RFC 9110 7.6.1)."""
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


def random_request_id() -> str:
    """SPEC's request id: a random 6-digit integer."""
    return str(random.randint(100000, 999999))


def json_response(
    status: int, body: dict[str, object], request_id: bytes, keep_alive: bool
) -> bytes:
    payload = json.dumps(body).encode()
    reason = _REASONS.get(status, b"Error")
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"Content-Type: application/json; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(payload),
            b"X-Request-ID: " + request_id + b"\r\n" if request_id else b"",
            b"" if keep_alive else b"Connection: close\r\n",
            b"\r\n",
            payload,
        )
    )


_REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


@dataclass(slots=True)
class ProxyStats:
    """Counters the metrics endpoint and status view read; plain ints on the hot path."""

    requests: int = 0
    retries: int = 0
    upstream_errors: dict[str, int] = field(default_factory=dict)
    client_errors: dict[int, int] = field(default_factory=dict)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    #: Per-phase histograms (``--phase-timings``); None when off.
    phases: PhaseStats | None = None
    #: The front-end's upstream pool (queue and connect counters for the metrics).
    upstreams: UpstreamPool | None = None

    def error(self, kind: str) -> None:
        self.upstream_errors[kind] = self.upstream_errors.get(kind, 0) + 1

    def observe(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


class Frontend:
    """Shared state of the listener: pool, upstream connections, settings, live clients."""

    def __init__(
        self, pool: Pool, config: ProxyConfig, control_key: str | None, stats: ProxyStats
    ) -> None:
        self.pool = pool
        self.config = config
        self.control_key = control_key
        self.stats = stats
        self.key = parse_key(config.key)
        self.upstreams = UpstreamPool()
        stats.upstreams = self.upstreams
        self.clients: set[ClientConnection] = set()
        self.loop = asyncio.get_running_loop()
        self.in_flight = 0
        self._sweeper: asyncio.Task[None] | None = None
        if config.phase_timings and stats.phases is None:
            stats.phases = PhaseStats()
        self.phases = stats.phases

    def protocol(self) -> ClientConnection:
        return ClientConnection(self)

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="frontend-timeouts")

    async def _sweep(self) -> None:
        """One timer for every timeout: cheaper than a timer handle per request."""
        config = self.config
        while True:
            due = self.loop.time() + 0.25
            await asyncio.sleep(0.25)
            now = self.loop.time()
            if self.phases is not None:
                self.phases.observe(LOOP_LAG, now - due)
            self.upstreams.expire(now, config.queue_timeout)
            for client in list(self.clients):
                client.check_timeouts(now, config)

    async def drain(self, timeout: float) -> None:
        """Let in-flight exchanges finish (bounded), then close every client connection."""
        deadline = self.loop.time() + timeout
        for client in list(self.clients):
            client.stop_after_current()
        while self.in_flight > 0 and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for client in list(self.clients):
            client.abort()
        self.upstreams.close_all()


class Exchange:
    """One client request and its relay to an upstream; the sink of that upstream's response."""

    __slots__ = (
        "attempts",
        "body",
        "body_len",
        "candidates",
        "chunked_in",
        "client",
        "complete",
        "conn",
        "conn_tokens",
        "connecting",
        "control",
        "dead",
        "expect_continue",
        "front",
        "has_host",
        "head",
        "headers",
        "keep_alive",
        "key",
        "last_activity",
        "marks",
        "method",
        "out",
        "path",
        "queued_at",
        "replayable",
        "replica",
        "request_id",
        "resp_chunked_out",
        "resp_conn_tokens",
        "resp_framed",
        "resp_headers",
        "resp_keep_alive",
        "resp_reason",
        "resp_started",
        "resp_status",
        "sent",
        "start",
        "swallow",
        "url",
    )

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.front = client.front
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_len = 0
        self.complete = False
        self.chunked_in = False
        self.expect_continue = False
        self.has_host = False
        self.conn_tokens: frozenset[bytes] = frozenset()
        self.request_id = b""
        self.key: str | None = None
        self.method = b""
        self.path = b""
        self.keep_alive = True
        self.control = False
        self.candidates: object = None
        self.replica: Replica | None = None
        self.conn: UpstreamConnection | None = None
        self.connecting = False
        self.attempts = 0
        self.replayable = True
        self.sent = False
        self.head = b""
        self.out: list[bytes] = []
        self.resp_status = 0
        self.resp_reason = b""
        self.resp_headers: list[tuple[bytes, bytes]] = []
        self.resp_conn_tokens: frozenset[bytes] = frozenset()
        self.resp_started = False
        self.resp_chunked_out = False
        self.resp_framed = True
        self.resp_keep_alive = True
        self.swallow = False
        self.dead = False
        self.start = 0.0
        self.last_activity = 0.0
        #: When this exchange joined a replica's FIFO queue (0: not waiting).
        self.queued_at = 0.0
        #: Phase marks (loop times) when --phase-timings is on; see frontend/phases.py.
        self.marks: list[float] | None = None
        if self.front.phases is not None:
            self.marks = [0.0] * 6
            self.marks[M_BEGIN] = self.front.loop.time()

    # -- request side ---------------------------------------------------------------------

    def headers_done(self, parser: httptools.HttpRequestParser) -> None:
        """Headers parsed: decide the target and the head to send upstream."""
        self.method = parser.get_method()
        self.keep_alive = parser.should_keep_alive()
        url = self.url
        q = url.find(b"?")
        self.path = url if q < 0 else url[:q]
        path = self.path
        # With a separate admin listener (control_key None) nothing is shadowed here.
        self.control = self.front.control_key is not None and (
            path in RESERVED_EXACT or path.startswith(RESERVED_PREFIX)
        )
        rid = self.request_id
        if not rid:
            rid = self.request_id = random_request_id().encode()
        self.key = self.front.key.extract(url, self.headers, self.client.transport)
        lines = [self.method, b" ", url, b" HTTP/1.1\r\n"]
        append = lines.append
        tokens = self.conn_tokens
        for name, value in self.headers:
            lname = name.lower()
            if lname in _SKIP or (tokens and lname in tokens):
                continue
            append(name)
            append(b": ")
            append(value)
            append(b"\r\n")
        if not self.has_host:
            append(b"Host: lbproxy-upstream\r\n")
        append(b"X-Request-ID: ")
        append(rid)
        append(b"\r\n")
        if self.chunked_in:
            append(b"Transfer-Encoding: chunked\r\n")
        append(b"\r\n")
        self.head = b"".join(lines)
        self.headers = []

    def add_body(self, chunk: bytes) -> None:
        if self.chunked_in:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        self.body_len += len(chunk)
        if self.replayable:
            self.body.append(chunk)
            if self.body_len > REPLAY_LIMIT:
                self.replayable = False
        conn = self.conn
        if self.sent and conn is not None:
            conn.write(chunk)
            if not self.replayable:
                self.body = []
        elif not self.replayable:
            self.body.append(chunk)  # not connected yet: must hold it until we are
            self.client.set_reading(False)

    def body_done(self) -> None:
        self.complete = True
        if self.chunked_in:
            tail = b"0\r\n\r\n"
            if self.replayable:
                self.body.append(tail)
            conn = self.conn
            if self.sent and conn is not None:
                conn.write(tail)
            elif not self.replayable:
                self.body.append(tail)

    # -- routing and sending ------------------------------------------------------------------

    def begin(self) -> None:
        """Start relaying (the exchange is at the head of its client's queue)."""
        front = self.front
        front.in_flight += 1
        front.stats.requests += 1
        self.start = self.last_activity = front.loop.time()
        if self.marks is not None:
            self.marks[M_STARTED] = self.start
        if self.expect_continue:
            self.client.write(_CONTINUE)
        control_key = front.control_key
        if self.control and control_key is not None:
            conn = front.upstreams.take(control_key)
            if conn is not None:
                self._send(conn)
            else:
                self._connect(control_key)
            return
        key = self.key or self.request_id.decode("latin-1")  # absent source: the request id
        bound = front.config.bounded_load
        try:
            if bound:
                self.candidates = front.pool.pick_bounded(key, bound, front.in_flight)
            else:
                self.candidates = front.pool.pick(key)
        except EmptyRingError:
            self.fail(503, "no replica is available")
            return
        self.try_next()

    def try_next(self) -> None:
        front = self.front
        candidates = self.candidates
        assert candidates is not None
        if self.attempts > front.config.retries:
            self.fail(502, "no replica could take the request (retries exhausted)")
            return
        try:
            replica: Replica = next(candidates)  # type: ignore[call-overload]
        except StopIteration:
            self.fail(502 if self.attempts else 503, "no replica could take the request")
            return
        except EmptyRingError:
            self.fail(503, "no replica is available")
            return
        self.attempts += 1
        if self.attempts > 1:
            front.stats.retries += 1
        self.replica = replica
        replica.in_flight += 1
        # An idle connection (LIFO), else a slot under --max-conns-per-replica (then
        # on_connect_slot opens one), else a place in the replica's FIFO queue.
        conn = front.upstreams.acquire(replica.url, self, front.config.max_conns_per_replica)
        if conn is not None:
            self._send(conn)

    # -- Waiter (upstream.py): the per-replica FIFO queue hands us a connection or a slot --

    def on_granted(self, conn: UpstreamConnection) -> None:
        self.queued_at = 0.0
        self._send(conn)

    def on_connect_slot(self, key: str) -> None:
        self.queued_at = 0.0
        self._connect(key)

    def on_queue_timeout(self) -> None:
        self.queued_at = 0.0
        name = self.replica.name if self.replica else "?"
        self.front.stats.error("queue_timeout")
        self.fail(
            503,
            f"replica {name!r} is at its connection limit and the request waited "
            f"{self.front.config.queue_timeout:g} s in its queue",
        )

    def _connect(self, key: str) -> None:
        self.connecting = True
        # What the replica has answered so far on any connection: if that moves while this
        # connect times out, the replica is busy (full accept queue), not dead.
        seen = self.front.upstreams.host(key).answered
        task = asyncio.ensure_future(self._open(key, seen))
        task.add_done_callback(_consume)

    async def _open(self, key: str, seen: int) -> None:
        front = self.front
        counted = not self.control  # the control app has no cap and no queue
        upstreams = front.upstreams
        try:
            conn = await upstreams.open(key, front.config.connect_timeout, counted=counted)
        except (OSError, TimeoutError) as exc:
            self.connecting = False
            if counted:
                upstreams.connect_failed(key)
            timed_out = isinstance(exc, TimeoutError)
            if timed_out and counted and upstreams.host(key).answered != seen:
                # Overload is not failure (issue 14): the replica answered on its other
                # connections while this SYN went unanswered, so its accept queue is full.
                # No failure is charged; the request waits for one of those connections
                # (FIFO), or tries the next replica when there is none.
                front.stats.error("connect_overload")
                if self.dead:
                    self._drop_replica()
                    return
                held = upstreams.requeue(key, self)
                if held is not None:
                    self._send(held)
                elif self.queued_at == 0.0:
                    self._drop_replica()
                    self.try_next()
                return
            kind = "connect_timeout" if timed_out else "connect_refused"
            front.stats.error(kind)
            self._upstream_failed(kind)
            if self.dead:
                return
            if self.control:
                self.fail(503, "the balancer's control endpoint is unavailable")
            elif self.replayable:
                self.try_next()
            else:
                self.fail(502, f"replica {self.replica.name if self.replica else '?'} unreachable")
            return
        self.connecting = False
        if self.dead:
            conn.release(True)
            return
        self._send(conn)

    def _send(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        if self.marks is not None:
            self.marks[M_ACQUIRED] = self.front.loop.time()
        self.sent = True
        self.resp_status = 0
        self.resp_headers = []
        self.resp_conn_tokens = frozenset()
        self.resp_reason = b""
        body = self.body
        if body:
            conn.send(self, self.head + b"".join(body))
            if not self.replayable:
                self.body = []
                self.client.set_reading(True)
        else:
            conn.send(self, self.head)

    def _drop_replica(self) -> None:
        """Leave the current replica without charging it a failure."""
        replica = self.replica
        if replica is not None:
            replica.in_flight -= 1
            self.replica = None

    def _upstream_failed(self, kind: str) -> None:
        """Book-keeping for a failed attempt on the current replica."""
        replica = self.replica
        if replica is not None:
            replica.in_flight -= 1
            self.front.pool.note_failure(replica, kind)
            self.replica = None if self.replayable else replica

    # -- the response (ResponseSink) ----------------------------------------------------

    def on_upstream_status(self, reason: bytes) -> None:
        self.resp_reason += reason

    def on_upstream_header(self, name: bytes, value: bytes) -> None:
        # len() first: lower-casing every header name just to find this one is wasted work
        if len(name) == 10 and name.lower() == b"connection":
            self.resp_conn_tokens = _connection_tokens(value)
        self.resp_headers.append((name, value))

    def on_upstream_headers_complete(self, conn: UpstreamConnection) -> None:
        status = conn.parser.get_status_code()
        if 100 <= status < 200:  # an interim response: ours to drop, a final one follows
            self.resp_headers = []
            self.resp_conn_tokens = frozenset()
            self.resp_reason = b""
            return
        self.resp_status = status
        self.resp_keep_alive = conn.parser.should_keep_alive()
        self.last_activity = self.front.loop.time()
        if self.marks is not None:
            self.marks[M_RESPONSE] = self.last_activity
        if status == 404 and not self.control:
            self.swallow = True
            return
        chunked = False
        framed = status in (204, 304) or self.method == b"HEAD"
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, self.resp_reason or b"OK")]
        append = lines.append
        tokens = self.resp_conn_tokens
        for name, value in self.resp_headers:
            lname = name.lower()
            if lname in _SKIP or (tokens and lname in tokens):
                if lname == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                continue
            if lname == b"content-length":
                framed = True
            append(name)
            append(b": ")
            append(value)
            append(b"\r\n")
        append(b"X-Request-ID: ")
        append(self.request_id)
        append(b"\r\n")
        self.resp_framed = framed or chunked
        if chunked or not framed:
            # Re-chunk: httptools hands us de-chunked data; an unframed (read-until-close)
            # body becomes chunked too, so the client connection can stay alive.
            self.resp_chunked_out = True
            append(b"Transfer-Encoding: chunked\r\n")
        if not self.keep_alive:
            append(b"Connection: close\r\n")
        append(b"\r\n")
        self.resp_headers = []
        self.out.append(b"".join(lines))
        self.resp_started = True
        if self.method == b"HEAD":
            # llhttp cannot be told this response has no body: finish it here and drop
            # the connection rather than let the parser wait for bytes that never come.
            self.client.write(b"".join(self.out))
            self.out = []
            conn.abort()
            self._finish(reusable=False)

    def on_upstream_body(self, body: bytes) -> None:
        if self.swallow:
            return
        if self.resp_chunked_out:
            self.out.append(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            self.out.append(body)

    def on_upstream_data_done(self) -> None:
        out = self.out
        if out:
            self.client.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()
        self.last_activity = self.front.loop.time()

    def on_upstream_complete(self, conn: UpstreamConnection) -> None:
        if self.swallow:
            self.out = [
                json_response(
                    400,
                    failure_body(
                        f"'{self.path.decode('latin-1')}' endpoint does not exist in "
                        "server replicas"
                    ),
                    self.request_id,
                    self.keep_alive,
                )
            ]
            self.resp_started = True
        elif self.resp_chunked_out:
            self.out.append(b"0\r\n\r\n")
        self.on_upstream_data_done()
        self._finish(reusable=self.resp_keep_alive and self.complete)

    def on_upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None:
        if self.dead or self.conn is not conn:
            return
        self.conn = None
        kind = "reset" if exc is not None else "closed"
        if self.resp_started:
            if self.resp_status and not self.resp_framed and not self.swallow:
                # A read-until-close body (no length, not chunked) ends this way.
                self.out.append(b"0\r\n\r\n")
                self.on_upstream_data_done()
                self._finish(reusable=False)
                return
            self.front.stats.error("truncated")
            self._upstream_failed("truncated")
            self.dead = True
            self.front.in_flight -= 1
            self.client.abort()
            return
        self.front.stats.error(kind)
        self._upstream_failed(kind)
        if self.control:
            self.fail(503, "the balancer's control endpoint closed the connection")
            return
        if self.replayable and not conn.got_bytes and self.method in IDEMPOTENT:
            self.try_next()
            return
        name = self.replica.name if self.replica else "?"
        self.fail(502, f"replica {name!r} failed before answering")

    def on_upstream_writable(self, writable: bool) -> None:
        self.client.set_reading(writable)

    # -- endings -------------------------------------------------------------------------

    def on_read_timeout(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.abort()
            self.conn = None
        self.front.stats.error("read_timeout")
        self._upstream_failed("read_timeout")
        if self.resp_started:
            self.dead = True
            self.front.in_flight -= 1
            self.client.abort()
        else:
            self.fail(504, "the replica did not answer in time")

    def fail(self, status: int, message: str) -> None:
        """Answer the client ourselves (SPEC's failure body) and end the exchange."""
        conn = self.conn
        if conn is not None:
            conn.abort()
            self.conn = None
        self.front.stats.client_errors[status] = self.front.stats.client_errors.get(status, 0) + 1
        self.out = [json_response(status, failure_body(message), self.request_id, self.keep_alive)]
        self.resp_started = True
        self.on_upstream_data_done()
        self._finish(reusable=False)

    def _finish(self, reusable: bool) -> None:
        if self.dead:
            return
        self.dead = True
        front = self.front
        front.in_flight -= 1
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.release(reusable)
        replica = self.replica
        if replica is not None and not self.control:
            replica.in_flight -= 1
            status = self.resp_status
            if status:
                replica.served += 1
                replica.served_total += 1
                by_status = replica.by_status
                by_status[status] = by_status.get(status, 0) + 1
                if replica.served == 1:
                    front.pool.events.emit("first_response", replica.name, f"status {status}")
                if status >= 500:
                    front.pool.note_failure(replica, f"status {status}")
                else:
                    replica.failures = 0
        if not self.control:  # a dashboard stream's lifetime is no request latency
            now = front.loop.time()
            front.stats.observe(now - self.start)
            marks = self.marks
            if marks is not None and front.phases is not None:
                marks[M_DONE] = now
                front.phases.observe_marks(marks)
        self.client.exchange_done(self)


def _consume(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("upstream connect task failed", exc_info=task.exception())


class ClientConnection(asyncio.Protocol):
    """One downstream connection: requests are relayed one at a time, in order."""

    def __init__(self, front: Frontend) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.cur: Exchange | None = None
        self.head_bytes = 0
        self.idle_since = front.loop.time()
        self.closed = False
        self.stopping = False
        self.reading = True

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.front.clients.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(501, "protocol upgrades (websocket) are not supported")
        except httptools.HttpParserCallbackError as exc:
            refusal = exc.__context__
            if isinstance(refusal, _Refuse):
                self._reject(refusal.status, refusal.message)
            else:
                log.error("request handling failed", exc_info=refusal)
                self._reject(400, "the request could not be handled")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.front.clients.discard(self)
        for exchange in self.queue:
            if not exchange.dead:
                exchange.dead = True
                if exchange.start:
                    self.front.in_flight -= 1
                conn = exchange.conn
                if conn is not None:
                    exchange.conn = None
                    conn.abort()
                replica = exchange.replica
                if replica is not None and not exchange.control:
                    replica.in_flight -= 1
        self.queue.clear()

    def pause_writing(self) -> None:
        if self.queue and self.queue[0].conn is not None:
            self.queue[0].conn.set_reading(False)

    def resume_writing(self) -> None:
        if self.queue and self.queue[0].conn is not None:
            self.queue[0].conn.set_reading(True)

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.cur = Exchange(self)
        self.head_bytes = 0
        self.idle_since = self.front.loop.time()

    def on_url(self, url: bytes) -> None:
        cur = self.cur
        assert cur is not None
        cur.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _Refuse(431, f"request head larger than {MAX_HEAD_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        cur = self.cur
        assert cur is not None
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _Refuse(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
        lname = name.lower()
        if lname == _RID:
            cur.request_id = value.strip()
            return
        if lname == b"transfer-encoding":
            cur.chunked_in = b"chunked" in value.lower()
        elif lname == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = 0
            if length > self.front.config.max_body_bytes:
                raise _Refuse(
                    413,
                    f"request body of {length} bytes exceeds the limit of "
                    f"{self.front.config.max_body_bytes} bytes",
                )
        elif lname == b"expect":
            cur.expect_continue = value.lower() == b"100-continue"
        elif lname == b"host":
            cur.has_host = True
        elif lname == b"connection":
            cur.conn_tokens = _connection_tokens(value)
        cur.headers.append((name, value))

    def on_headers_complete(self) -> None:
        cur = self.cur
        assert cur is not None
        if self.parser.should_upgrade():
            raise _Refuse(501, "protocol upgrades (websocket, CONNECT) are not supported")
        if cur.marks is not None:
            cur.marks[M_HEAD] = self.front.loop.time()
        cur.headers_done(self.parser)
        self.queue.append(cur)
        if len(self.queue) == 1:
            cur.begin()

    def on_body(self, body: bytes) -> None:
        cur = self.cur
        assert cur is not None
        if cur.body_len + len(body) > self.front.config.max_body_bytes:
            raise _Refuse(
                413, f"request body exceeds the limit of {self.front.config.max_body_bytes} bytes"
            )
        cur.add_body(body)

    def on_message_complete(self) -> None:
        cur = self.cur
        assert cur is not None
        cur.body_done()
        self.cur = None
        self.idle_since = self.front.loop.time()

    # -- helpers -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def set_reading(self, on: bool) -> None:
        transport = self.transport
        if self.closed or transport is None or on == self.reading:
            return
        self.reading = on
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def exchange_done(self, exchange: Exchange) -> None:
        queue = self.queue
        if queue and queue[0] is exchange:
            queue.popleft()
        if not exchange.keep_alive or self.stopping:
            self.close()
            return
        self.idle_since = self.front.loop.time()
        if queue:
            self.front.loop.call_soon(queue[0].begin)

    def check_timeouts(self, now: float, config: ProxyConfig) -> None:
        queue = self.queue
        if queue:
            exchange = queue[0]
            if (
                exchange.sent
                and not exchange.dead
                and now - exchange.last_activity > config.read_timeout
            ):
                exchange.on_read_timeout()
            return
        cur = self.cur
        if cur is not None and now - self.idle_since > config.header_timeout:
            self._reject(408, "the request did not arrive in time")
        elif cur is None and now - self.idle_since > config.idle_timeout:
            self.close()

    def _reject(self, status: int, message: str) -> None:
        """A request we refuse before relaying it: answer and close the connection."""
        if self.closed:
            return
        self.front.stats.client_errors[status] = self.front.stats.client_errors.get(status, 0) + 1
        if not self.queue or all(e.dead for e in self.queue):
            self.write(json_response(status, failure_body(message), b"", False))
        self.close()

    def stop_after_current(self) -> None:
        """Shutdown: finish what is in flight, then close; close now if idle."""
        self.stopping = True
        if not self.queue:
            self.close()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()


class _Refuse(Exception):
    """Raised from a parser callback to refuse the request with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
