"""Keep-alive HTTP/1.1 connections to the replicas (and to the control app), pooled per address.

The proxy's hot path writes a request on an idle pooled connection and gets the response
through parser callbacks, all synchronously inside the event loop's read callbacks: no
task, no future, no coroutine per request. Only opening a new connection awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
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


class UpstreamConnection(asyncio.Protocol):
    """One connection to one address; carries one request at a time."""

    __slots__ = ("closed", "got_bytes", "key", "parser", "pool", "sink", "transport")

    def __init__(self, pool: UpstreamPool, key: str) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.got_bytes = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:  # an idle connection talking: the server is closing it or broken
            self.abort()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
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


class UpstreamPool:
    """Idle connections per address (LIFO: the warmest socket first), capped per address."""

    def __init__(self, max_idle_per_key: int = 256) -> None:
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._open: set[UpstreamConnection] = set()
        self._addr: dict[str, tuple[str, int] | str] = {}
        self._max_idle = max_idle_per_key
        self.opened = 0

    def take(self, key: str) -> UpstreamConnection | None:
        """An idle live connection to ``key``, or None."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def put(self, conn: UpstreamConnection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self._max_idle:
            conn.close()
            return
        idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

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

    async def open(self, key: str, timeout: float) -> UpstreamConnection:
        """A new connection to ``key`` ("http://host:port" or "unix:/path")."""
        loop = asyncio.get_running_loop()
        addr = self._address(key)

        def factory() -> UpstreamConnection:
            return UpstreamConnection(self, key)

        if isinstance(addr, str):
            coro = loop.create_unix_connection(factory, addr)
        else:
            coro = loop.create_connection(factory, addr[0], addr[1])
        async with asyncio.timeout(timeout):
            _, conn = await coro
        self._open.add(conn)
        self.opened += 1
        return conn

    def close_idle(self, key: str | None = None) -> None:
        """Close idle connections (all, or to one address: a replica that left)."""
        keys = [key] if key is not None else list(self._idle)
        for k in keys:
            for conn in self._idle.pop(k, []):
                conn.close()

    def close_all(self) -> None:
        self.close_idle()
        for conn in list(self._open):
            with contextlib.suppress(Exception):
                conn.abort()
        self._open.clear()
