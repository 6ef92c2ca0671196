"""An upstream connection goes back to the pool after an answer to HEAD.

An answer to HEAD ends at its head whatever its Content-Length or Transfer-Encoding say
(RFC 9110 9.3.2, RFC 9112 6.3), and the connection is as reusable as after any answer
(HAProxy reuses it; tests/test_conformance.py compares). llhttp, through httptools, cannot
be told that a response has no body: its parser would wait for the bytes the head
announces. So the connection gets a fresh parser, and the old one, which may still be
parsing the rest of the current read, talks to a guard until that read is over: any part
of a message there (a body sent to a HEAD, junk) drops the connection, as junk after any
answer does. On the next loop turn the connection goes back to the pool, reading.
"""

from __future__ import annotations

import asyncio

import httptools

from lbproxy.frontend.upstream import UpstreamConnection


def keep_alive(conn: UpstreamConnection, tokens: frozenset[bytes]) -> bool:
    """Whether the replica keeps the connection after this answer's head.

    llhttp's ``should_keep_alive`` says no to an answer without Content-Length or chunked
    framing (it would end at the close), which is wrong for HEAD: decide from the version
    and the Connection options (RFC 9112 9.3), as llhttp does for a framed answer.
    """
    if conn.parser.get_http_version() == "1.0":
        return b"keep-alive" in tokens
    return b"close" not in tokens


class _Guard:
    """The sink for what the old parser still reads after a HEAD answer's head."""

    __slots__ = ("conn",)

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn

    def _junk(self, *_args: object) -> None:
        self.conn.abort()

    on_upstream_status = _junk
    on_upstream_header = _junk
    on_upstream_headers_complete = _junk
    on_upstream_body = _junk

    def on_upstream_upgrade(self, conn: UpstreamConnection, rest: bytes) -> None:
        conn.abort()

    def on_upstream_complete(self, conn: UpstreamConnection) -> None:
        """The old parser ending the HEAD answer (``Content-Length: 0``) or a stray empty
        chunked body: either way the bytes are consumed and the stream is in step."""

    def on_upstream_data_done(self) -> None:
        pass

    def on_upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None:
        pass

    def on_upstream_writable(self, writable: bool) -> None:
        pass


def release(conn: UpstreamConnection, loop: asyncio.AbstractEventLoop) -> None:
    """Pool ``conn`` once the current read is over (see the module docstring)."""
    guard = _Guard(conn)
    conn.sink = guard
    conn.parser = httptools.HttpResponseParser(conn)
    loop.call_soon(_pool, conn, guard)


def _pool(conn: UpstreamConnection, guard: _Guard) -> None:
    if conn.sink is guard and not conn.closed:
        conn.set_reading(True)  # never pool a connection paused for a slow client
        conn.release(True)
