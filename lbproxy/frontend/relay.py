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
import math
import random
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import httptools

from lbproxy.config import ProxyConfig
from lbproxy.control.pool import Incarnation, Pool, Replica, ReplicaState
from lbproxy.errors import EmptyRingError, failure_body
from lbproxy.frontend import after_head, forwarded, framing
from lbproxy.frontend.framing import Out
from lbproxy.frontend.phases import (
    ACCEPT,
    GAP,
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
from lbproxy.frontend.tunnel import Tunnel
from lbproxy.frontend.upstream import UpstreamConnection, UpstreamPool

log = logging.getLogger(__name__)

REQUEST_ID = "X-Request-ID"
_RID = b"x-request-id"

#: Request fields never forwarded: hop-by-hop ones (framing.HOP_BY_HOP), and the ones this
#: proxy sets itself (X-Request-ID) or answers itself (Expect).
_SKIP = framing.HOP_BY_HOP | {b"expect", _RID}
#: Request fields the relay looks at twice: hop-by-hop ones and client forwarded fields.
_SKIP_REQ = _SKIP | forwarded.NAMES
#: Response fields never forwarded (the proxy adds its own X-Request-ID).
_SKIP_RESP = framing.HOP_BY_HOP | {_RID}
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
RESERVED_EXACT = frozenset({b"/rep", b"/add", b"/rm"})
RESERVED_PREFIX = b"/lbproxy/"
#: Clients the timeout sweep checks between two yields to the event loop.
SWEEP_SLICE = 512
#: Resends of a request whose pooled connection turned out closed (see _retry_stale).
STALE_RETRIES = 2
#: Request bodies up to this size are kept so the request can be replayed elsewhere.
REPLAY_LIMIT = 1024 * 1024
#: Largest request line + headers accepted (431 beyond).
MAX_HEAD_BYTES = 64 * 1024
#: Longest request target accepted (414 beyond; NGINX's default buffer is 8 KiB).
MAX_URL_BYTES = 16 * 1024
#: Requests a client may queue behind the one being relayed before we stop reading its
#: socket (pipelining is bounded as uvicorn's httptools_impl and aiohttp's web_protocol do).
MAX_PIPELINE = 8
#: Latency histogram bucket bounds, seconds (Prometheus-style cumulative on export).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Out's members as module globals: an Enum member read through its class costs about
#: 75 ns on Python 3.11, and the response path tests the framing several times a request.
_LENGTH, _CHUNKED, _CLOSE, _NONE = Out.LENGTH, Out.CHUNKED, Out.CLOSE, Out.NONE
_RID_FIELD = b"X-Request-ID: "
#: Request fields the relay reads while parsing; every other field is forwarded as it is
#: parsed (see ClientConnection.on_header), unless a Connection token names it.
_WATCH = _SKIP_REQ | {b"host", b"content-length"}
#: Connection tokens that name no field forwarded as parsed: the head built while parsing
#: stands (``keep-alive``, say); any other token (``close`` too: a field may bear that
#: name) rebuilds it from the parsed fields.
_HARMLESS_TOKENS = _SKIP_REQ
_NO_TOKENS: frozenset[bytes] = frozenset()
#: A syntactically valid request line (RFC 9112 3): method token, target, version.
_REQUEST_LINE = re.compile(rb"(?:^|\n)([!#$%&'*+.^_`|~0-9A-Za-z-]+) [^ \r\n]+ HTTP/1\.[01]\r?\n")
#: The methods llhttp parses (it refuses any other token before our code sees it).
_LLHTTP_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    b"SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)


def random_request_id() -> str:
    """SPEC's request id: a random 6-digit integer (uniform on 100000-999999;
    ``random()`` rather than ``randint``, which costs about ten times more)."""
    return str(100000 + int(_random() * 900000))


_random = random.random
_bisect_left = bisect.bisect_left


def retry_after_field(seconds: float) -> bytes:
    """A ``Retry-After`` field line: ``seconds`` rounded up to whole delay-seconds, at
    least 1 (RFC 9110 10.2.3), built once and sent with a 503 (15.6.4)."""
    return b"Retry-After: %d\r\n" % max(1, math.ceil(seconds))


#: A queue timeout's 503: the replica is up but at its connection limit, and one of its
#: connections is likely free again within a second (the queue itself is not waited out).
_RETRY_BUSY = retry_after_field(1)


def json_response(
    status: int,
    body: dict[str, object],
    request_id: bytes,
    keep_alive: bool,
    head_only: bool = False,
    fields: bytes = b"",
) -> bytes:
    """The balancer's own answer (SPEC's JSON shape); no body for a HEAD request.

    ``fields``: preformatted header lines (each ending in CRLF) to add, a 503's Retry-After.
    """
    payload = json.dumps(body).encode()
    return b"".join(
        (
            framing.status_line(status),
            b"Content-Type: application/json; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(payload),
            fields,
            b"X-Request-ID: " + request_id + b"\r\n" if request_id else b"",
            b"" if keep_alive else b"Connection: close\r\n",
            b"\r\n",
            b"" if head_only else payload,
        )
    )


@dataclass(slots=True)
class ProxyStats:
    """Counters the metrics endpoint and status view read; plain ints on the hot path."""

    requests: int = 0
    retries: int = 0
    upstream_errors: dict[str, int] = field(default_factory=dict)
    client_errors: dict[int, int] = field(default_factory=dict)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    #: Answers that reflect replica work, and their latency sum: 2xx and 3xx relayed from a
    #: replica. Not 4xx (the client's mistake, answered at once), not the balancer's own
    #: answers, not an upgrade (a tunnel's lifetime is the client's). The autoscaler's
    #: service time and arrival rate read these (docs/autoscale.md).
    work_answers: int = 0
    work_seconds: float = 0.0
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
        self,
        pool: Pool,
        config: ProxyConfig,
        control_key: str | None,
        stats: ProxyStats,
        up_within: float = 1.0,
    ) -> None:
        """``up_within``: seconds before a replica could be up when none is (the health
        checks' ``rise`` x ``interval``), the 503's ``Retry-After`` then."""
        self.pool = pool
        self.config = config
        self.control_key = control_key
        self.stats = stats
        self.key = parse_key(config.key)
        #: Peers whose forwarded fields are kept (--trusted-proxies), and the scheme this
        #: listener speaks (X-Forwarded-Proto; a TLS listener sets b"https").
        self.trusted = forwarded.parse_networks(config.trusted_proxies)
        self.scheme = b"http"
        self.loop = asyncio.get_running_loop()
        self.upstreams = UpstreamPool(idle_timeout=config.upstream_idle_timeout, loop=self.loop)
        stats.upstreams = self.upstreams
        self.clients: set[ClientConnection] = set()
        self.in_flight = 0
        #: Called when the ring is empty: True if it took the exchange (the autoscaler's
        #: scale-from-zero hold, control/autoscale.py); the request fails with 503 otherwise.
        self.on_empty: Callable[[Exchange], bool] | None = None
        #: The ``Retry-After`` field of the 503 for "no replica up" (RFC 9110 10.2.3).
        self.retry_empty = retry_after_field(up_within)
        self._sweeper: asyncio.Task[None] | None = None
        self._redispatch_due = False
        if config.phase_timings and stats.phases is None:
            stats.phases = PhaseStats()
        self.phases = stats.phases
        # Read once per request on the hot path: plain attributes, not config/loop chains.
        self.time = self.loop.time
        self.key_is_request_id = self.key.is_request_id
        self.retries = config.retries
        self.max_conns = config.max_conns_per_replica
        self.bounded_load = config.bounded_load
        self.rewrite_404 = config.rewrite_404

    def protocol(self) -> ClientConnection:
        return ClientConnection(self)

    def ring_changed(self) -> None:
        """The pool installed a new ring (``Pool.on_ring_change``): queued requests are
        routed again on the next loop turn (once however many rings come in one turn)."""
        if not self._redispatch_due:
            self._redispatch_due = True
            self.loop.call_soon(self._redispatch)

    def _redispatch(self) -> None:
        self._redispatch_due = False
        for waiter in self.upstreams.redistribute(self._stays):
            waiter.redispatch()

    def _stays(self, waiter: object, key: str) -> bool:
        """Whether a request queued on address ``key`` stays there: its key's owner is
        still that address (with --bounded-load: its replica is still up there). Without
        any replica up there is nowhere better to go."""
        ex = cast(Exchange, waiter)
        replica = ex.replica
        if self.config.bounded_load:
            return replica is not None and replica.state is ReplicaState.UP and replica.url == key
        try:
            owner = next(self.pool.pick(ex.key or ex.request_id.decode("latin-1")), None)
        except EmptyRingError:
            return True
        return owner is None or owner.url == key

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
            # With 10,000 idle keep-alive clients one pass is several milliseconds of
            # uninterrupted work: yield to the loop between slices so that established
            # connections' reads are not held behind it (issue 14's idle point).
            clients = list(self.clients)
            for start in range(0, len(clients), SWEEP_SLICE):
                if start:
                    await asyncio.sleep(0)
                    now = self.loop.time()
                for client in clients[start : start + SWEEP_SLICE]:
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
    """One client request and its relay to an upstream; the sink of that upstream's response.

    Counters have one settle point (``_settle``), idempotent: ``counted`` says whether this
    exchange holds one of ``front.in_flight``, ``charged`` which replica's ``in_flight`` it
    holds. Every ending (answer, failure, client gone, retry) goes through it, so drain and
    ``--bounded-load`` see true figures whatever path an exchange takes.
    """

    __slots__ = (
        "attempts",
        "body",
        "body_len",
        "candidates",
        "charged",
        "chunked_in",
        "client",
        "complete",
        "conn",
        "conn_tokens",
        "connecting",
        "control",
        "counted",
        "dead",
        "early",
        "expect_continue",
        "front",
        "head",
        "headers",
        "host",
        "hosts",
        "http11",
        "incarnation",
        "interim",
        "keep_alive",
        "key",
        "last_activity",
        "lines",
        "marks",
        "method",
        "out",
        "path",
        "queued_at",
        "received",
        "replayable",
        "replica",
        "request_id",
        "resp_conn_tokens",
        "resp_eof",
        "resp_headers",
        "resp_keep_alive",
        "resp_out",
        "resp_reason",
        "resp_started",
        "resp_status",
        "rid_line",
        "sent",
        "stale_retries",
        "start",
        "swallow",
        "te_codings",
        "tunnel",
        "upgrade",
        "upgrade_value",
        "upgraded",
        "url",
        "wants_tunnel",
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
        self.te_codings: tuple[bytes, ...] = ()
        self.expect_continue = False
        self.hosts = 0
        self.host = b""
        self.upgrade: frozenset[bytes] = _NO_TOKENS
        self.upgrade_value = b""
        #: An upgrade request (WebSocket...) to tunnel if the replica answers 101.
        self.wants_tunnel = False
        self.upgraded = False
        self.tunnel: Tunnel | None = None
        #: Client bytes that followed the upgrade request, held until the 101.
        self.early = b""
        self.conn_tokens: frozenset[bytes] = _NO_TOKENS
        self.request_id = b""
        self.rid_line = b""
        #: The head to send upstream, built while the request is parsed: the request line's
        #: method and target go in slots 0 and 2 once known (see headers_done).
        self.lines: list[bytes] = [b"", b" ", b"", b" HTTP/1.1\r\n"]
        #: A trusted peer's own forwarded fields (lower-case name, value), to extend.
        self.received: list[tuple[bytes, bytes]] | None = None
        self.key: str | None = None
        self.method = b""
        self.path = b""
        self.keep_alive = True
        self.http11 = True
        self.control = False
        self.candidates: object = None
        self.replica: Replica | None = None
        #: The incarnation of ``replica`` the request went to: its failures count there only.
        self.incarnation: Incarnation | None = None
        self.charged: Replica | None = None
        self.counted = False
        self.conn: UpstreamConnection | None = None
        self.connecting = False
        self.attempts = 0
        self.replayable = True
        self.sent = False
        self.head = b""
        self.out: list[bytes] = []
        self.interim = False
        self.resp_status = 0
        self.resp_reason = b""
        self.resp_headers: list[tuple[bytes, bytes]] = []
        self.resp_conn_tokens: frozenset[bytes] = _NO_TOKENS
        self.resp_started = False
        self.resp_out = _LENGTH
        self.resp_eof = False
        self.resp_keep_alive = True
        self.swallow = False
        self.dead = False
        self.start = 0.0
        self.last_activity = 0.0
        #: When this exchange joined a replica's FIFO queue (0: not waiting).
        self.queued_at = 0.0
        self.stale_retries = 0
        #: Phase marks (loop times) when --phase-timings is on; see frontend/phases.py.
        self.marks: list[float] | None = None
        phases = self.front.phases
        if phases is not None:
            self.marks = [0.0] * 6
            now = self.marks[M_BEGIN] = self.front.time()
            # Accept (or the connection's previous exchange) to this first byte parsed.
            phases.observe(ACCEPT if client.fresh else GAP, now - client.idle_since)
            client.fresh = False

    # -- request side ---------------------------------------------------------------------

    def headers_done(self, parser: httptools.HttpRequestParser) -> None:
        """Headers parsed: check them, decide the target, finish the head to send upstream.

        The forwarded fields were already laid out in ``lines`` as they were parsed
        (ClientConnection.on_header); here come the request line, our own fields and the
        end of the head. A Connection field naming a forwarded field rebuilds the list.
        """
        self.method = method = parser.get_method()
        self.keep_alive = parser.should_keep_alive()
        self.http11 = http11 = parser.get_http_version() == "1.1"
        tokens = self.conn_tokens
        if tokens:
            bad = framing.protected_token(tokens)
            if bad is not None:
                raise _Refuse(400, f"the Connection header may not name {bad.decode('latin-1')!r}")
        hosts = self.hosts
        if hosts != 1:
            if hosts > 1:
                raise _Refuse(400, "more than one Host header")
            if http11:
                raise _Refuse(400, "an HTTP/1.1 request needs a Host header (RFC 9112 3.2)")
        url = self.url
        q = url.find(b"?")
        path = self.path = url if q < 0 else url[:q]
        front = self.front
        # With a separate admin listener (control_key None) nothing is shadowed here.
        if front.control_key is not None:
            self.control = path in RESERVED_EXACT or path.startswith(RESERVED_PREFIX)
        rid = self.request_id
        if not rid:
            rid = self.request_id = random_request_id().encode()
        if not front.key_is_request_id:
            self.key = front.key.extract(url, self.headers, self.client.transport)
        lines = self.lines
        if tokens and not tokens <= _HARMLESS_TOKENS:
            lines = self.lines = [b"", b" ", b"", b" HTTP/1.1\r\n"]
            for name, value in self.headers:
                lname = name.lower()
                if lname not in _SKIP_REQ and lname not in tokens:
                    lines += (name, b": ", value, b"\r\n")
        lines[0] = method
        lines[2] = url
        if not hosts:
            lines.append(b"Host: lbproxy-upstream\r\n")
        if self.wants_tunnel:  # hop-by-hop, but the upgrade is what we relay
            lines.append(b"Connection: Upgrade\r\nUpgrade: " + self.upgrade_value + b"\r\n")
        rid_line = self.rid_line = _RID_FIELD + rid + b"\r\n"
        lines.append(rid_line)
        client = self.client
        received = self.received
        if received:
            lines += forwarded.lines(client.peer_ip, front.scheme, self.host, received)
        elif not self.chunked_in:  # the common case: one cached piece ends the head
            lines.append(client.forwarded_tail(self.host))
            self.head = b"".join(lines)
            return
        else:
            lines.append(client.forwarded_block(self.host))
        if self.chunked_in:
            lines.append(framing.chunked_field(self.te_codings))
        lines.append(b"\r\n")
        self.head = b"".join(lines)

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
        elif not self.replayable and not self.dead:
            self.body.append(chunk)  # not connected yet: must hold it until we are
            self.client.pause(_HOLD)

    def body_done(self) -> None:
        self.complete = True
        if self.sent and (self.body_len or self.chunked_in):
            # The replica's turn starts now. (A request without a body completes in the same
            # read as its head, so the time begin() took still stands.)
            self.last_activity = self.front.time()
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
        if self.dead:  # the client left before its turn came
            return
        front = self.front
        front.in_flight += 1
        self.counted = True
        front.stats.requests += 1
        self.start = self.last_activity = front.time()
        if self.marks is not None:
            self.marks[M_STARTED] = self.start
        if self.expect_continue and self.http11 and not self.complete:
            self.client.write(_CONTINUE)
        if self.control:
            control_key = front.control_key
            assert control_key is not None  # control is only set when there is one
            conn = front.upstreams.take(control_key)
            if conn is not None:
                self._send(conn)
            else:
                self._connect(control_key)
            return
        key = self.key or self.request_id.decode("latin-1")  # absent source: the request id
        bound = front.bounded_load
        try:
            if bound:
                self.candidates = front.pool.pick_bounded(key, bound, front.in_flight)
            else:
                self.candidates = front.pool.pick(key)
        except EmptyRingError:
            self.fail(503, "no replica is available", front.retry_empty)
            return
        self.try_next()

    def reroute(self) -> None:
        """Route again from the ring's current state (a request held at an empty pool)."""
        if not self.dead:
            self.candidates = self.front.pool.pick(self.key or self.request_id.decode("latin-1"))
            self.try_next()

    def try_next(self) -> None:
        front = self.front
        candidates = self.candidates
        assert candidates is not None
        if self.attempts:
            if self.attempts > front.retries:
                self.fail(502, "no replica could take the request (retries exhausted)")
                return
            self._reset_response()
        try:
            replica: Replica = next(candidates)  # type: ignore[call-overload]
        except StopIteration:
            # Nobody up at all (a ring that still names removed replicas counts as empty).
            if not self.attempts and front.on_empty is not None and front.on_empty(self):
                return  # held until a replica is up (scale from zero); then reroute()
            if self.attempts:
                self.fail(502, "no replica could take the request")
            else:
                self.fail(503, "no replica could take the request", front.retry_empty)
            return
        except EmptyRingError:
            hold = front.on_empty
            if hold is not None and self.attempts == 0 and hold(self):
                return  # held until a replica is up (scale from zero); then reroute()
            self.fail(503, "no replica is available", front.retry_empty)
            return
        self.attempts += 1
        if self.attempts > 1:
            front.stats.retries += 1
        self.replica = replica
        self.incarnation = replica.incarnation
        if self.charged is not None:
            self._discharge()
        replica.in_flight += 1
        self.charged = replica
        # An idle connection (LIFO), else a slot under --max-conns-per-replica (then
        # on_connect_slot opens one), else a place in the replica's FIFO queue.
        conn = front.upstreams.acquire(replica.url, self, front.max_conns)
        if conn is not None:
            self._send(conn)

    def _reset_response(self) -> None:
        """Before another attempt: nothing of an earlier attempt's answer may carry over."""
        self.resp_out = _LENGTH
        self.resp_eof = False
        self.interim = False
        self.resp_status = 0
        self.resp_headers = []
        self.resp_conn_tokens = _NO_TOKENS
        self.resp_reason = b""

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
            _RETRY_BUSY,
        )

    def redispatch(self) -> None:
        """The ring changed while this waited in its replica's queue and its key belongs
        elsewhere now (HAProxy's redispatch of queued requests): route again. Not a retry:
        nothing was tried on the replica it leaves, so nothing is charged to it."""
        if self.dead:
            return
        since = self.queued_at
        self.queued_at = 0.0
        self._drop_replica()
        self.attempts -= 1
        front = self.front
        key = self.key or self.request_id.decode("latin-1")
        bound = front.config.bounded_load
        if bound:
            self.candidates = front.pool.pick_bounded(key, bound, front.in_flight)
        else:
            self.candidates = front.pool.pick(key)
        self.try_next()
        replica = self.replica
        if self.queued_at and replica is not None:  # queued again: by its arrival time
            front.upstreams.backdate(replica.url, self, since)

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
        """Write the request on ``conn``. The response state is fresh: set so by __init__,
        and by ``_reset_response`` before any further attempt."""
        self.conn = conn
        if self.marks is not None:
            self.marks[M_ACQUIRED] = self.front.time()
        self.sent = True
        if self.complete:
            self.last_activity = self.front.time()
        if self.client.writing_paused:
            conn.set_reading(False)  # the client reads nothing yet: neither do we
        body = self.body
        if body:
            conn.send(self, self.head + b"".join(body))
            if not self.replayable:
                self.body = []
                self.client.unpause(_HOLD)
        else:
            conn.send(self, self.head)

    def _retry_stale(self) -> bool:
        """A pooled connection closed before any response byte: the server closed it while
        idle just as this request went out, so nothing reached its application. Send the
        request again (any method) on another connection to the same replica, charging
        nothing; at most ``STALE_RETRIES`` times, then it is an ordinary failure."""
        if not self.replayable or self.stale_retries >= STALE_RETRIES:
            return False
        self.stale_retries += 1
        front = self.front
        front.stats.error("stale_connection")
        self.sent = False
        self._reset_response()
        control_key = front.control_key
        if self.control and control_key is not None:
            conn = front.upstreams.take(control_key)
            if conn is not None:
                self._send(conn)
            else:
                self._connect(control_key)
            return True
        replica = self.replica
        if replica is None:
            return False
        self.incarnation = replica.incarnation
        conn = front.upstreams.acquire(replica.url, self, front.max_conns)
        if conn is not None:
            self._send(conn)
        return True

    def _drop_replica(self) -> None:
        """Leave the current replica without charging it a failure."""
        self._discharge()
        self.replica = None

    def _discharge(self) -> None:
        charged = self.charged
        if charged is not None:
            self.charged = None
            charged.in_flight -= 1

    def _settle(self) -> None:
        """The one place counters are given back; safe to call any number of times."""
        self._discharge()
        if self.counted:
            self.counted = False
            self.front.in_flight -= 1

    def _upstream_failed(self, kind: str) -> None:
        """Book-keeping for a failed attempt on the current replica."""
        self._discharge()
        replica = self.replica
        if replica is not None and not self.control:
            self.front.pool.note_failure(replica, kind, self.incarnation)

    # -- the response (ResponseSink) ----------------------------------------------------

    def on_upstream_status(self, reason: bytes) -> None:
        self.resp_reason += reason

    def on_upstream_header(self, name: bytes, value: bytes) -> None:
        # len() first: lower-casing every header name just to find this one is wasted work
        if len(name) == 10 and name.lower() == b"connection":
            self.resp_conn_tokens = framing.connection_tokens(value, self.resp_conn_tokens)
        self.resp_headers.append((name, value))

    def on_upstream_headers_complete(self, conn: UpstreamConnection) -> None:
        if self.dead:
            return
        parser = conn.parser
        status = parser.get_status_code()
        self.last_activity = now = self.front.time()
        if status < 200:
            if status == 101:
                self._switching(conn)
                return
            # An interim answer (RFC 9110 15.2): llhttp completes it as a message of its own;
            # on_upstream_complete must not take that for the end of the exchange.
            self.interim = True
            if framing.forward_interim(status, self.http11):
                lines = [framing.status_line(status, self.resp_reason)]
                lines += framing.header_block(self.resp_headers, self.resp_conn_tokens)
                lines.append(b"\r\n")
                self.client.write(b"".join(lines))
            self.resp_headers = []
            self.resp_conn_tokens = _NO_TOKENS
            self.resp_reason = b""
            return
        self.resp_status = status
        self.resp_keep_alive = parser.should_keep_alive()
        method = self.method
        if self.marks is not None:
            self.marks[M_RESPONSE] = now
        if status == 404 and self.front.rewrite_404 and not self.control:
            self.swallow = True
            if method == b"HEAD":
                self._head_answered(conn)
            return
        has_length = False
        codings: tuple[bytes, ...] = ()
        # The head goes straight into the output list: on_upstream_data_done joins it with
        # the body that came in the same read, one copy and one write for both. Nothing of
        # this answer is in the list yet (a 1xx before it was written on its own).
        lines = self.out
        lines.append(b"HTTP/1.1 %d %s\r\n" % (status, self.resp_reason or framing.reason(status)))
        tokens = self.resp_conn_tokens
        for name, value in self.resp_headers:
            lname = name.lower()
            if lname in _SKIP_RESP or (tokens and lname in tokens):
                if lname == b"transfer-encoding":
                    codings = framing.transfer_codings(value, codings)
                continue
            if lname == b"content-length":
                has_length = True
                if status == 204:  # framing.keep_framing_field: never in a 204
                    continue
            lines += (name, b": ", value, b"\r\n")
        lines.append(self.rid_line)
        if has_length and not codings and status != 204 and status != 304 and method != b"HEAD":
            # the common answer, decided without a call (framing.response_framing agrees);
            # resp_out and resp_eof keep their initial values (_LENGTH, False)
            if self.keep_alive and self.complete:
                lines.append(b"\r\n" if self.http11 else b"Connection: keep-alive\r\n\r\n")
                self.resp_started = True
                return
        else:
            out = self.resp_out = framing.response_framing(
                method, status, has_length and not codings, self.http11
            )
            # A body neither length-framed nor chunked (nor absent) ends at the close.
            self.resp_eof = out is not _NONE and not has_length and not framing.is_chunked(codings)
            if out is _CHUNKED:
                lines.append(framing.chunked_field(codings))
            elif out is _CLOSE:
                self.keep_alive = False
        if not self.complete:
            # The answer came before the whole request: the rest of the body would have to
            # be read and thrown away to keep the connection; close it instead.
            self.keep_alive = False
        if not self.keep_alive:
            lines.append(b"Connection: close\r\n\r\n")
        elif not self.http11:
            lines.append(b"Connection: keep-alive\r\n\r\n")
        else:
            lines.append(b"\r\n")
        self.resp_started = True
        if method == b"HEAD":
            self._head_answered(conn)

    def _switching(self, conn: UpstreamConnection) -> None:
        """101 from the replica: pass it on; the tunnel starts where its parser stops."""
        if not self.wants_tunnel:  # a 101 to a request that asked for no upgrade
            conn.abort()
            self.conn = None
            self.front.stats.error("bad_upgrade")
            self._upstream_failed("bad_upgrade")
            self.fail(502, "the replica switched protocols unasked")
            return
        self.resp_status = 101
        self.upgraded = True
        self.keep_alive = False  # the connection ends with the tunnel
        lines = [framing.status_line(101, self.resp_reason)]
        lines += framing.header_block(self.resp_headers, self.resp_conn_tokens)
        lines.append(b"Connection: Upgrade\r\nUpgrade: ")
        lines.append(b", ".join(v for k, v in self.resp_headers if k.lower() == b"upgrade"))
        lines.append(b"\r\nX-Request-ID: " + self.request_id + b"\r\n\r\n")
        self.resp_headers = []
        self.out.append(b"".join(lines))
        self.resp_started = True

    def on_upstream_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None:
        """The replica's parser stopped after the 101: from here on, bytes both ways."""
        if self.dead or not self.upgraded or self.conn is not conn:
            conn.abort()
            if not self.dead and self.conn is conn:
                self.conn = None
                self._upstream_failed("bad_upgrade")
                self.fail(502, "the replica switched protocols unasked")
            return
        tunnel = self.tunnel = Tunnel(self, conn)
        conn.tunnel = tunnel.from_upstream
        conn.pool.detach(conn)  # a long-lived tunnel must not hold an HTTP connection slot
        client = self.client
        client.tunnel = tunnel.from_client
        self.on_upstream_data_done()
        if rest:
            tunnel.from_upstream(rest)
        if self.early:
            tunnel.from_client(self.early)
            self.early = b""
        client.unpause(_TUNNEL_WAIT)

    def end_tunnel(self) -> None:
        """Either side closed, or the tunnel sat idle: close both."""
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.close()
        self._finish(reusable=False)

    def _head_answered(self, conn: UpstreamConnection) -> None:
        """The answer to HEAD is complete at its head (RFC 9112 6.3); llhttp cannot be told
        that it has no body, so after_head gives the connection a fresh parser and pools it
        once this read is over."""
        if self.swallow:
            self._swallowed_answer()
        self.on_upstream_data_done()
        self.conn = None
        if self.complete and after_head.keep_alive(conn, self.resp_conn_tokens):
            after_head.release(conn, self.front.loop)
        else:
            conn.abort()
        self._finish(reusable=False)

    def _swallowed_answer(self) -> None:
        """SPEC: a path the replicas do not have is the balancer's 400, not their 404."""
        self.out = [
            json_response(
                400,
                failure_body(
                    f"'{self.path.decode('latin-1')}' endpoint does not exist in server replicas"
                ),
                self.request_id,
                self.keep_alive and self.complete,
                self.method == b"HEAD",
            )
        ]
        if not self.complete:
            self.keep_alive = False
        self.resp_started = True

    def on_upstream_body(self, body: bytes) -> None:
        if self.swallow or self.dead:
            return
        if self.resp_out is _CHUNKED:
            self.out.append(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            self.out.append(body)

    def on_upstream_data_done(self) -> None:
        out = self.out
        if out:
            self.client.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()
        if not self.dead:  # (after the last read of an exchange that just ended: no need)
            self.last_activity = self.front.time()

    def on_upstream_complete(self, conn: UpstreamConnection) -> None:
        if self.interim:  # the end of a 1xx: the final answer follows on this connection
            self.interim = False
            return
        if self.dead or self.upgraded:  # a 101 ends in on_upstream_upgrade
            return
        if self.swallow:
            self._swallowed_answer()
        elif self.resp_out is _CHUNKED:
            self.out.append(b"0\r\n\r\n")
        out = self.out  # on_upstream_data_done, inlined: the exchange ends right here
        if out:
            self.client.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()
        self._finish(self.resp_keep_alive and self.complete)

    def on_upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None:
        if self.dead or self.conn is not conn:
            return
        self.conn = None
        if self.tunnel is not None:
            self._finish(reusable=False)
            return
        kind = "reset" if exc is not None else "closed"
        if self.resp_status:
            if self.resp_eof and exc is None and not self.interim:
                # A read-until-close body ends this way, and only a clean close ends it:
                # a reset is a truncation (RFC 9112 8), never relayed as complete.
                if self.swallow:
                    self._swallowed_answer()
                elif self.resp_out is _CHUNKED:
                    self.out.append(b"0\r\n\r\n")
                self.on_upstream_data_done()
                self._finish(reusable=False)
                return
            self.front.stats.error("truncated")
            self._upstream_failed("truncated")
            self._abandon()
            return
        if conn.reused and not conn.got_bytes and self._retry_stale():
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
        if writable:
            self.client.unpause(_BACKPRESSURE)
        else:
            self.client.pause(_BACKPRESSURE)

    # -- endings -------------------------------------------------------------------------

    def on_read_timeout(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.abort()
            self.conn = None
        self.front.stats.error("read_timeout")
        self._upstream_failed("read_timeout")
        if self.resp_started:
            self._abandon()
        else:
            self.fail(504, "the replica did not answer in time")

    def fail(self, status: int, message: str, fields: bytes = b"") -> None:
        """Answer the client ourselves (SPEC's failure body) and end the exchange.

        ``fields``: preformatted header lines for the answer (a 503's ``Retry-After``).
        """
        conn = self.conn
        if conn is not None:
            conn.abort()
            self.conn = None
        if self.resp_started:  # part of another answer is out: only closing is honest
            self._abandon()
            return
        if not self.complete:
            self.keep_alive = False
        self.front.stats.client_errors[status] = self.front.stats.client_errors.get(status, 0) + 1
        self.out = [
            json_response(
                status,
                failure_body(message),
                self.request_id,
                self.keep_alive,
                self.method == b"HEAD",
                fields,
            )
        ]
        self.resp_started = True
        self.on_upstream_data_done()
        self._finish(reusable=False)

    def kill(self) -> None:
        """The client is gone: drop the upstream side and give the counters back."""
        if self.dead:
            return
        self.dead = True
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.abort()
        self._settle()

    def _abandon(self) -> None:
        """A broken answer already partly sent: the client connection must be cut."""
        self.kill()
        self.client.abort()

    def _finish(self, reusable: bool) -> None:
        if self.dead:
            return
        self.dead = True
        front = self.front
        conn = self.conn
        client = self.client
        if conn is not None:
            self.conn = None
            if reusable and client.writing_paused:
                conn.set_reading(True)  # never pool a connection we paused for this client
            conn.release(reusable)
        # _settle, inlined on the hot path
        charged = self.charged
        if charged is not None:
            self.charged = None
            charged.in_flight -= 1
        if self.counted:
            self.counted = False
            front.in_flight -= 1
        replica = self.replica
        work = False
        if replica is not None and not self.control:
            status = self.resp_status
            work = 200 <= status < 400
            if status:
                replica.served += 1
                replica.served_total += 1
                by_status = replica.by_status
                by_status[status] = by_status.get(status, 0) + 1
                if replica.served == 1:
                    front.pool.events.emit("first_response", replica.name, f"status {status}")
                if status >= 500:
                    front.pool.note_failure(replica, f"status {status}", self.incarnation)
                elif replica.failures and replica.incarnation is self.incarnation:
                    replica.failures = 0  # a success of the incarnation that failed
        now = front.time()
        if not self.control and self.start:  # a dashboard stream's lifetime is no latency
            stats = front.stats  # ProxyStats.observe, inlined
            elapsed = now - self.start
            stats.latency_counts[_bisect_left(LATENCY_BUCKETS, elapsed)] += 1
            stats.latency_sum += elapsed
            if work:
                stats.work_answers += 1
                stats.work_seconds += elapsed
            marks = self.marks
            if marks is not None and front.phases is not None:
                marks[M_DONE] = now
                front.phases.observe_marks(marks)
        if client.paused:
            client.unpause(_BACKPRESSURE | _HOLD)
        client.exchange_done(self, now)


def _consume(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("upstream connect task failed", exc_info=task.exception())


#: Why a client connection's reading is paused (a bit each; reading resumes at zero).
_BACKPRESSURE = 1  # the upstream cannot take the request body as fast as it arrives
_HOLD = 2  # a body too large to replay is held until the upstream connection is open
_PIPELINE = 4  # MAX_PIPELINE requests wait behind the one being relayed
_REFUSED = 8  # the connection ends with an error answer once earlier answers are out
_TUNNEL_WAIT = 16  # an upgrade request waits for the replica's 101 (or refusal)


class ClientConnection(asyncio.Protocol):
    """One downstream connection: requests are relayed one at a time, in order."""

    def __init__(self, front: Frontend) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.cur: Exchange | None = None
        self.head_bytes = 0
        self.idle_since = front.time()
        #: No request begun yet (--phase-timings: its wait is "accept", later ones "gap").
        self.fresh = True
        self.closed = False
        self.stopping = False
        self.paused = 0
        self.writing_paused = False
        #: An exchange whose upgrade offer (h2c) was ignored and whose body follows the
        #: bytes llhttp stopped at; a fresh parser reads that body for it.
        self.resume: Exchange | None = None
        self.resume_armed = False
        self.refusal: tuple[int, str] | None = None
        self.peer_ip = ""
        self.trusted = False
        self.fwd_host = b""
        self.fwd_block = b""
        self.fwd_tail = b""
        #: Set once the connection is a tunnel (frontend/tunnel.py): raw bytes, no HTTP.
        self.tunnel: Callable[[bytes], None] | None = None
        #: The upgrade request llhttp stopped at, until its answer (a refusal reads on).
        self.stopped_at: Exchange | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.front.clients.add(self)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if isinstance(peer, tuple) else ""
        self.trusted = forwarded.is_trusted(self.peer_ip, self.front.trusted)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel(data)
            return
        if self.refusal is not None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._after_upgrade(data[cast(int, exc.args[0]) :])
        except httptools.HttpParserCallbackError as exc:
            refusal = exc.__context__
            if isinstance(refusal, _Refuse):
                self._reject(refusal.status, refusal.message)
            else:
                log.error("request handling failed", exc_info=refusal)
                self._reject(400, "the request could not be handled")
        except httptools.HttpParserInvalidMethodError as exc:
            if any(  # a well-formed request line whose method llhttp does not know
                m.group(1) not in _LLHTTP_METHODS for m in _REQUEST_LINE.finditer(data)
            ):
                self._reject(501, "request method not implemented (RFC 9110 9.1)")
            else:
                self._reject(400, f"malformed HTTP request: {exc}")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}")

    def _after_upgrade(self, rest: bytes) -> None:
        """llhttp stops at an upgrade request's head; an ignored offer (h2c) goes on as
        HTTP/1.1 on a fresh parser, which first reads that request's body, if any."""
        ex = self.resume
        last = self.queue[-1] if self.queue else None
        if last is not None and last.wants_tunnel and ex is None:
            # Bytes after an upgrade request are the tunnel's after a 101, or the next
            # requests' without one: hold them and read nothing more until the answer.
            last.early += rest
            self.stopped_at = last
            self.pause(_TUNNEL_WAIT)
            return
        self.parser = httptools.HttpRequestParser(self)
        if ex is not None:
            synthetic = (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                if ex.chunked_in
                else b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % ex.body_len
            )
            ex.body_len = 0
            self.resume_armed = True
            self.parser.feed_data(synthetic)
        if rest:
            self.data_received(rest)

    def _resume_after_upgrade_refused(self, exchange: Exchange) -> None:
        """A fresh parser (llhttp stopped at the upgrade request) reads on, first the bytes
        held since; reading resumes before they are fed, as new ones arrive only later."""
        if self.closed:
            return
        early, exchange.early = exchange.early, b""
        self.parser = httptools.HttpRequestParser(self)
        self.unpause(_TUNNEL_WAIT)
        if early:
            self.data_received(early)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.front.clients.discard(self)
        for exchange in self.queue:
            exchange.kill()
        self.queue.clear()

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.queue and self.queue[0].conn is not None:
            self.queue[0].conn.set_reading(False)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.queue and self.queue[0].conn is not None:
            self.queue[0].conn.set_reading(True)

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.resume is not None:
            return
        self.cur = Exchange(self)
        self.head_bytes = 0
        self.idle_since = self.front.time()

    def on_url(self, url: bytes) -> None:
        if self.resume is not None:
            return
        cur = self.cur
        assert cur is not None
        cur.url += url
        if len(cur.url) > MAX_URL_BYTES:
            raise _Refuse(414, f"request target longer than {MAX_URL_BYTES} bytes")
        self.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.resume is not None:
            return
        cur = self.cur
        assert cur is not None
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _Refuse(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
        lname = name.lower()
        if lname not in _WATCH:  # an ordinary field: forwarded as it is (see headers_done)
            cur.lines += (name, b": ", value, b"\r\n")
            cur.headers.append((name, value))
            return
        if lname == _RID:
            rid = value.strip()
            if len(rid) > framing.MAX_REQUEST_ID:
                raise _Refuse(400, f"X-Request-ID longer than {framing.MAX_REQUEST_ID} bytes")
            cur.request_id = rid
            return
        if lname == b"host":
            cur.hosts += 1
            cur.host = value
            cur.lines += (name, b": ", value, b"\r\n")
        elif lname == b"transfer-encoding":
            cur.te_codings = framing.transfer_codings(value, cur.te_codings)
            cur.chunked_in = framing.is_chunked(cur.te_codings)
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
            cur.body_len = length  # until the body arrives: what an ignored upgrade reads
            cur.lines += (name, b": ", value, b"\r\n")
        elif lname == b"expect":
            cur.expect_continue = value.lower() == b"100-continue"
        elif lname in forwarded.NAMES:
            if self.trusted:  # a trusted proxy's chain is extended, not replaced
                if cur.received is None:
                    cur.received = []
                cur.received.append((lname, value))
        elif lname == b"connection":
            cur.conn_tokens = framing.connection_tokens(value, cur.conn_tokens)
        elif lname == b"upgrade":
            cur.upgrade = cur.upgrade | framing.upgrade_protocols(value)
        cur.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.resume is not None:
            return
        cur = self.cur
        assert cur is not None
        if self.parser.should_upgrade():
            if self.parser.get_method() == b"CONNECT":
                raise _Refuse(501, "CONNECT is not supported by this proxy")
            if not framing.only_h2c(cur.upgrade):
                # WebSocket and other upgrades: relayed, then tunnelled on a 101.
                if cur.body_len or cur.chunked_in:
                    raise _Refuse(400, "an upgrade request with a body is not supported")
                cur.wants_tunnel = True
                cur.upgrade_value = b", ".join(v for k, v in cur.headers if k.lower() == b"upgrade")
            elif cur.body_len or cur.chunked_in:
                # h2c offered: answer over HTTP/1.1 (RFC 9110 7.8); the body comes after
                # the point where llhttp stops (see _after_upgrade).
                self.resume = cur
        else:
            cur.body_len = 0
        if cur.marks is not None:
            cur.marks[M_HEAD] = self.front.time()
        cur.headers_done(self.parser)
        self.queue.append(cur)
        if len(self.queue) == 1:
            cur.begin()
        elif len(self.queue) > MAX_PIPELINE:
            self.pause(_PIPELINE)

    def on_body(self, body: bytes) -> None:
        cur = self.resume or self.cur
        assert cur is not None
        self.idle_since = self.front.time()  # a slow upload is alive while bytes come
        if cur.body_len + len(body) > self.front.config.max_body_bytes:
            raise _Refuse(
                413, f"request body exceeds the limit of {self.front.config.max_body_bytes} bytes"
            )
        cur.add_body(body)

    def on_message_complete(self) -> None:
        resume = self.resume
        if resume is not None:
            if not self.resume_armed:
                # the upgrade head itself completing: its body is still to come
                self.cur = None
                return
            self.resume = None
            self.resume_armed = False
            resume.body_done()
            self.idle_since = self.front.time()
            return
        cur = self.cur
        assert cur is not None
        cur.body_done()
        self.cur = None
        self.idle_since = self.front.time()

    # -- helpers -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def forwarded_block(self, host: bytes) -> bytes:
        """This connection's forwarded fields for ``host``, built once per Host value (a
        keep-alive client sends the same one every time)."""
        if host != self.fwd_host or not self.fwd_block:
            self.fwd_host = host
            self.fwd_block = b"".join(forwarded.lines(self.peer_ip, self.front.scheme, host))
            self.fwd_tail = self.fwd_block + b"\r\n"
        return self.fwd_block

    def forwarded_tail(self, host: bytes) -> bytes:
        """``forwarded_block`` plus the blank line that ends a head (the common request's
        last piece)."""
        if host != self.fwd_host or not self.fwd_block:
            self.forwarded_block(host)
        return self.fwd_tail

    def pause(self, reason: int) -> None:
        was = self.paused
        self.paused = was | reason
        if not was and not self.closed and self.transport is not None:
            self.transport.pause_reading()

    def unpause(self, reason: int) -> None:
        was = self.paused
        if not was & reason:
            return
        self.paused = was & ~reason
        if not self.paused and not self.closed and self.transport is not None:
            self.transport.resume_reading()

    def exchange_done(self, exchange: Exchange, now: float) -> None:
        queue = self.queue
        if queue and queue[0] is exchange:
            queue.popleft()
        if not exchange.keep_alive or self.stopping:
            self.close()
            return
        if exchange is self.stopped_at:
            # RFC 9110 7.8: the replica ignored the upgrade; its answer was an ordinary
            # one, so the connection goes on as HTTP/1.1 (HAProxy keeps it too).
            self.stopped_at = None
            self.idle_since = now
            self.front.loop.call_soon(self._resume_after_upgrade_refused, exchange)
            return
        self.idle_since = now
        if queue:
            self.front.loop.call_soon(queue[0].begin)
        elif self.refusal is not None:
            self._send_refusal()
            return
        if self.paused & _PIPELINE and len(queue) <= MAX_PIPELINE:
            self.unpause(_PIPELINE)

    def check_timeouts(self, now: float, config: ProxyConfig) -> None:
        queue = self.queue
        if queue:
            exchange = queue[0]
            if exchange.tunnel is not None:
                if now - exchange.last_activity > config.idle_timeout:
                    exchange.end_tunnel()
                return
            # The read timeout is the replica's silence once it has the whole request (or
            # since its last byte): a slow upload is the client's time, not the replica's.
            if (
                exchange.sent
                and exchange.complete
                and not exchange.dead
                and now - exchange.last_activity > config.read_timeout
            ):
                exchange.on_read_timeout()
            elif (
                not exchange.complete
                and exchange is self.cur
                and now - self.idle_since > config.idle_timeout
            ):
                self._reject(408, "the request body did not arrive in time")
            return
        cur = self.cur
        if cur is not None and now - self.idle_since > config.header_timeout:
            self._reject(408, "the request did not arrive in time")
        elif cur is None and now - self.idle_since > config.idle_timeout:
            self.close()

    def _reject(self, status: int, message: str) -> None:
        """A request we refuse: answer it once the answers before it are out, then close.

        A request cut short (a bad chunk, a body over the limit) whose exchange is already
        relayed is dropped first: its upstream connection has half a request on it.
        """
        if self.closed or self.refusal is not None:
            return
        self.front.stats.client_errors[status] = self.front.stats.client_errors.get(status, 0) + 1
        self.refusal = (status, message)
        self.pause(_REFUSED)
        cur = self.resume or self.cur
        self.cur = self.resume = None
        if cur is not None and not cur.complete and cur in self.queue:
            if cur.resp_started:
                cur._abandon()
                return
            cur.kill()
            self.queue.remove(cur)
        if not self.queue:
            self._send_refusal()

    def _send_refusal(self) -> None:
        assert self.refusal is not None
        status, message = self.refusal
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
