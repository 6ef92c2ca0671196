"""Keep-alive HTTP/1.1 connections to the replicas (and to the control app), pooled per address.

The proxy's hot path writes a request on an idle pooled connection and gets the response
through parser callbacks, all synchronously inside the event loop's read callbacks: no
task, no future, no coroutine per request. Only opening a new connection awaits.

Issue 14: with 1,500 clients, opening one upstream connection per waiting request overran
the replicas (their accept queues overflowed, SYNs were dropped, connects timed out, and
each replica queued hundreds of requests ahead of its heartbeat). So, as HAProxy's server
``maxconn`` + queue does, each address has a cap on open connections; a request that finds
no idle connection and no free slot waits in that address's FIFO queue and gets the next
connection released (or the next free slot). Idle connections are still reused LIFO (the
warmest socket first), but the waiting order is FIFO: whoever waited longest goes first.
A waiter that waits longer than the queue timeout is answered 503 by the relay.

A waiter is bound to an address, but the ring is not: when it changes (a replica joins,
dies, is ejected or removed), ``redistribute`` takes out every waiter whose key now
belongs to another replica, and the relay routes it again, keeping its arrival time
(``backdate``), as HAProxy redispatches the queue of a server that goes down and lets one
that comes up take from the backend's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Protocol, cast

import httptools


class ResponseSink(Protocol):
    """What an upstream connection reports to, for the request it currently carries."""

    def on_upstream_status(self, reason: bytes) -> None: ...
    def on_upstream_header(self, name: bytes, value: bytes) -> None: ...
    def on_upstream_headers_complete(self, conn: UpstreamConnection) -> None: ...
    def on_upstream_body(self, body: bytes) -> None: ...
    def on_upstream_complete(self, conn: UpstreamConnection) -> None: ...
    def on_upstream_data_done(self) -> None: ...
    def on_upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None: ...
    def on_upstream_writable(self, writable: bool) -> None: ...
    def on_upstream_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One connection to one address; carries one request at a time."""

    __slots__ = (
        "closed",
        "counted",
        "got_bytes",
        "host",
        "idle_since",
        "key",
        "parser",
        "pool",
        "reused",
        "sink",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: UpstreamPool, key: str) -> None:
        self.pool = pool
        self.key = key
        self.host = pool.host(key)
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        #: Where bytes go once the connection is a tunnel (frontend/tunnel.py).
        self.tunnel: Callable[[bytes], None] | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.got_bytes = False
        #: Holds one of its address's connection slots (released once, in pool.forget).
        self.counted = False
        #: Carried an earlier exchange: it may have been closed by the server while idle.
        self.reused = False
        self.idle_since = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:  # upgraded (frontend/tunnel.py): bytes, no HTTP
            tunnel(data)
            return
        sink = self.sink
        if sink is None:  # an idle connection talking: the server is closing it or broken
            self.abort()
            return
        self.got_bytes = True
        self.host.answered += 1
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:  # after a 101: the rest is tunnel bytes
            sink.on_upstream_upgrade(self, data[cast(int, exc.args[0]) :])
            return
        except httptools.HttpParserError as exc:
            self.abort()
            sink.on_upstream_lost(self, exc)
            return
        sink.on_upstream_data_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        sink = self.sink
        if sink is not None:
            self.sink = None
            sink.on_upstream_lost(self, exc)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.on_upstream_writable(False)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.on_upstream_writable(True)

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.sink is None:
            # A message nobody asked for (junk after the last answer, in the same read):
            # this connection's byte stream can no longer be trusted (issue 9).
            self.abort()

    def on_status(self, reason: bytes) -> None:
        if self.sink is not None:
            self.sink.on_upstream_status(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.sink is not None:
            self.sink.on_upstream_header(name, value)

    def on_headers_complete(self) -> None:
        if self.sink is not None:
            self.sink.on_upstream_headers_complete(self)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.on_upstream_body(body)

    def on_message_complete(self) -> None:
        sink = self.sink
        if sink is not None:
            sink.on_upstream_complete(self)

    # -- use -------------------------------------------------------------------------------

    def send(self, sink: ResponseSink, data: bytes) -> None:
        self.sink = sink
        self.got_bytes = False
        assert self.transport is not None
        self.transport.write(data)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def abort(self) -> None:
        """Drop the connection (mid-message: it can never be reused)."""
        self.sink = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
            self.pool.forget(self)

    def release(self, reusable: bool) -> None:
        """The response is complete: back to the pool, or closed when it cannot be reused."""
        self.sink = None
        if reusable and not self.closed:
            self.pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
            self.pool.forget(self)

    def set_reading(self, on: bool) -> None:
        if self.transport is not None and not self.closed:
            if on:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()


class Waiter(Protocol):
    """A request waiting for a connection to one address (the relay's Exchange)."""

    dead: bool
    queued_at: float

    def on_granted(self, conn: UpstreamConnection) -> None:
        """A released connection, handed over in FIFO order: send on it now."""

    def on_connect_slot(self, key: str) -> None:
        """A connection slot is reserved for this waiter: open a connection now."""

    def on_queue_timeout(self) -> None:
        """Waited longer than the queue timeout: answer 503."""

    def redispatch(self) -> None:
        """Taken out of its queue because the ring changed (``redistribute``): route again."""


class Host:
    """Per-address state: idle connections (LIFO), the slot count, the FIFO queue."""

    __slots__ = (
        "answered",
        "idle",
        "key",
        "live",
        "open",
        "queued_total",
        "timeouts",
        "waiters",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.idle: list[UpstreamConnection] = []
        #: Connections open or being opened (each holds a slot against the cap).
        self.open = 0
        self.waiters: deque[Waiter] = deque()
        #: Bumped whenever any connection to this address receives bytes: a connect that
        #: timed out while this moved was refused by a busy replica, not a dead one.
        self.answered = 0
        self.queued_total = 0
        self.timeouts = 0
        #: Connections established and not yet forgotten, counted against the cap or not.
        self.live = 0


class UpstreamPool:
    """Connections per address: idle ones reused LIFO, at most ``cap`` open, FIFO waiters."""

    def __init__(
        self,
        max_idle_per_key: int = 256,
        idle_timeout: float = 0.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        #: The loop, taken once (default: the running one): ``asyncio.get_running_loop()``
        #: costs a getpid() syscall on Python 3.11, and ``put`` runs once per request.
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._hosts: dict[str, Host] = {}
        self._open: set[UpstreamConnection] = set()
        self._addr: dict[str, tuple[str, int] | str] = {}
        self._max_idle = max_idle_per_key
        #: Idle connections older than this are closed by ``expire`` (0: never).
        self.idle_timeout = idle_timeout
        self.opened = 0
        self.queued = 0
        self.queue_timeouts = 0
        self.expired = 0
        #: Waiters moved to another replica's queue (or straight to it) on a ring change.
        self.redispatched = 0

    def host(self, key: str) -> Host:
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = Host(key)
        return host

    def take(self, key: str) -> UpstreamConnection | None:
        """An idle live connection to ``key``, or None (no cap, no queue: the control app)."""
        host = self._hosts.get(key)
        if host is None:
            return None
        idle = host.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def acquire(self, key: str, waiter: Waiter, cap: int) -> UpstreamConnection | None:
        """An idle connection to ``key`` now, or None: then the waiter either got a slot to
        connect with (``on_connect_slot`` was called) or joined the FIFO queue."""
        host = self._hosts.get(key)
        if host is None:
            host = self.host(key)
        idle = host.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        if cap <= 0 or host.open < cap:
            host.open += 1
            waiter.on_connect_slot(key)
        else:
            self.enqueue(host, waiter)
        return None

    def enqueue(self, host: Host, waiter: Waiter) -> None:
        waiter.queued_at = self._loop.time()
        host.waiters.append(waiter)
        host.queued_total += 1
        self.queued += 1

    def requeue(self, key: str, waiter: Waiter) -> UpstreamConnection | None:
        """Overload (a new connect timed out while the address's other connections
        answered): an idle one of those now, else a place in the FIFO queue for the next
        one released; neither (the waiter's ``queued_at`` stays 0) when it has none."""
        host = self.host(key)
        idle = host.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        if host.open > 0:
            self.enqueue(host, waiter)
        return None

    def redistribute(self, stays: Callable[[Waiter, str], bool]) -> list[Waiter]:
        """The ring changed: take out of every queue the live waiters for which
        ``stays(waiter, key)`` is False, oldest first, for the caller to route again.

        HAProxy does this when a server goes down (its queued requests go back to the
        backend, ``option redispatch``) and when one comes up (it takes from the backend's
        queue); without it a request waits on an address that may never free a connection
        (a replica that hangs or left) while the replica its key now maps to sits idle.
        One pass over the waiters per ring change, which is rare next to requests.
        """
        moved: list[Waiter] = []
        for key, host in self._hosts.items():
            if not host.waiters:
                continue
            keep: deque[Waiter] = deque()
            for waiter in host.waiters:
                if waiter.dead:
                    continue
                if stays(waiter, key):
                    keep.append(waiter)
                else:
                    moved.append(waiter)
            host.waiters = keep
        moved.sort(key=lambda w: w.queued_at)
        self.redispatched += len(moved)
        return moved

    def backdate(self, key: str, waiter: Waiter, since: float) -> None:
        """A redispatched waiter that joined ``key``'s queue keeps its arrival time and its
        place by it: FIFO by arrival across the move, and ``--queue-timeout`` bounds the
        whole wait, not each queue's share of it."""
        host = self._hosts.get(key)
        if host is None or not host.waiters or host.waiters[-1] is not waiter:
            return
        waiters = host.waiters
        waiters.pop()
        waiter.queued_at = since
        i = len(waiters)
        while i > 0 and waiters[i - 1].queued_at > since:
            i -= 1
        waiters.insert(i, waiter)

    def put(self, conn: UpstreamConnection) -> None:
        """A connection is free again: to the longest waiter, else to the idle list.

        A waiter gets it on the next loop turn, not now: put runs inside the parser's
        callback for the answer's end, and the rest of that read (junk a replica sent after
        its answer) would be parsed as the waiter's answer. By then junk has dropped it.
        """
        conn.reused = True
        if conn.host.waiters:
            self._loop.call_soon(self._grant, conn)
            return
        self._idle(conn)

    def _grant(self, conn: UpstreamConnection) -> None:
        if conn.closed:  # dropped meanwhile: forget() gave its slot to the next waiter
            return
        waiters = conn.host.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.dead:
                waiter.on_granted(conn)
                return
        self._idle(conn)

    def _idle(self, conn: UpstreamConnection) -> None:
        host = conn.host
        idle = host.idle
        if len(idle) >= self._max_idle:
            conn.close()
            return
        if self.idle_timeout:
            conn.idle_since = self._loop.time()
        idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        host = conn.host
        if conn in self._open:
            self._open.discard(conn)
            host.live -= 1
        idle = host.idle
        if idle and conn in idle:
            idle.remove(conn)
        if conn.counted:
            conn.counted = False
            self._slot_freed(host)

    def detach(self, conn: UpstreamConnection) -> None:
        """The connection became a tunnel (WebSocket): it no longer counts against the
        address's cap, or 128 open WebSockets would starve its HTTP requests."""
        if conn.counted:
            conn.counted = False
            self._slot_freed(conn.host)

    def connect_failed(self, key: str) -> None:
        """A connect attempt that held a slot failed: the slot goes to the next waiter."""
        self._slot_freed(self.host(key))

    def _slot_freed(self, host: Host) -> None:
        host.open -= 1
        waiters = host.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.dead:
                host.open += 1
                waiter.on_connect_slot(host.key)
                return

    def expire(self, now: float, queue_timeout: float) -> None:
        """Periodic: answer waiters past the queue timeout (the oldest are at the front)
        and close idle connections past the idle timeout (the oldest are at the bottom of
        each LIFO list)."""
        empty = []
        for key, host in self._hosts.items():
            if host.live <= 0 and host.open <= 0 and not host.idle and not host.waiters:
                empty.append(key)  # a replica that left (or was replaced on a new port)
                continue
            waiters = host.waiters
            while waiters and (waiters[0].dead or now - waiters[0].queued_at > queue_timeout):
                waiter = waiters.popleft()
                if not waiter.dead:
                    host.timeouts += 1
                    self.queue_timeouts += 1
                    waiter.on_queue_timeout()
            if self.idle_timeout:
                idle = host.idle
                while idle and now - idle[0].idle_since > self.idle_timeout:
                    conn = idle.pop(0)
                    self.expired += 1
                    conn.close()
        for key in empty:
            del self._hosts[key]
            self._addr.pop(key, None)

    def known(self, key: str) -> bool:
        """Whether the pool still keeps state for ``key`` (dropped once nothing uses it)."""
        return key in self._hosts

    def waiting(self) -> int:
        return sum(len(h.waiters) for h in self._hosts.values())

    def _address(self, key: str) -> tuple[str, int] | str:
        addr = self._addr.get(key)
        if addr is None:
            if key.startswith("unix:"):
                addr = key[5:]
            else:
                hostport = key.split("://", 1)[-1].rstrip("/")
                host, _, port = hostport.rpartition(":")
                addr = (host.strip("[]"), int(port))
            self._addr[key] = addr
        return addr

    async def open(self, key: str, timeout: float, *, counted: bool = False) -> UpstreamConnection:
        """A new connection to ``key`` ("http://host:port" or "unix:/path"); ``counted``:
        it holds a slot reserved by ``acquire`` (the caller calls ``connect_failed`` if
        this raises)."""
        loop = self._loop
        addr = self._address(key)

        def factory() -> UpstreamConnection:
            return UpstreamConnection(self, key)

        if isinstance(addr, str):
            coro = loop.create_unix_connection(factory, addr)
        else:
            coro = loop.create_connection(factory, addr[0], addr[1])
        async with asyncio.timeout(timeout):
            _, conn = await coro
        if not conn.closed:
            self._open.add(conn)
            conn.host.live += 1
        self.opened += 1
        if counted:
            if conn.closed:  # lost before we got here: its slot is free again
                self._slot_freed(conn.host)
            else:
                conn.counted = True
        return conn

    def close_idle(self, key: str | None = None) -> None:
        """Close idle connections (all, or to one address: a replica that left)."""
        hosts = [self._hosts[key]] if key is not None and key in self._hosts else []
        if key is None:
            hosts = list(self._hosts.values())
        for host in hosts:
            idle, host.idle = host.idle, []
            for conn in idle:
                conn.close()

    def forget_key(self, key: str) -> None:
        """``key``'s replica is gone for good: drop its idle connections and its entry.

        Called by the reconciler when an incarnation stops; every process replacement has a
        new port, so without this the per-address maps grow by one key per replacement.
        """
        self.close_idle(key)
        host = self._hosts.get(key)
        if host is not None and host.open == 0 and not host.waiters:
            del self._hosts[key]  # else in use still: a request may yet be answered
        self._addr.pop(key, None)

    def close_all(self) -> None:
        self.close_idle()
        for conn in list(self._open):
            with contextlib.suppress(Exception):
                conn.abort()
        self._open.clear()
