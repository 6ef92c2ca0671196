"""A live dashboard: one self-contained page plus a server-sent-events stream of the pool.

``GET /lbproxy/dashboard`` serves the page (HTML with its CSS and JS inlined from
``lbproxy/static``; nothing is fetched from anywhere else). ``GET /lbproxy/dashboard/stream``
is the page's ``EventSource``:

- ``event: snapshot`` first, with the ring family, every replica, the ring shares and the
  most recent pool events; then a snapshot (without the events) every second;
- ``event: pool`` for each pool event as the ``EventLog`` emits it;
- ``event: events`` (the recent list, in full) instead, when a slow client's queue
  overflowed and the oldest events were dropped;
- a ``: ping`` comment every few seconds so that proxies with read timeouts keep the stream.

Each stream subscribes to the ``EventLog`` and unsubscribes when it ends, whatever ends it
(the browser going away, the balancer shutting down). At most ``max_streams`` are open at
once; beyond that the stream answers 503 in SPEC's failure shape.

Wire it with ``dashboard.register(app, balancer)`` in ``create_app``; calling it twice on the
same application is harmless.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import time
from collections import deque
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from lbproxy.control.events import Event
from lbproxy.control.pool import ReplicaState
from lbproxy.errors import failure_body

if TYPE_CHECKING:
    from lbproxy.app import Balancer

log = logging.getLogger(__name__)

PAGE_PATH = "/lbproxy/dashboard"
STREAM_PATH = "/lbproxy/dashboard/stream"

#: Concurrent dashboard streams; each holds a connection and a subscription.
MAX_STREAMS = 32
#: Pool events buffered per stream before the oldest are dropped (a stalled browser).
QUEUE_LIMIT = 256
#: Seconds between full snapshots (the page's requests/s is computed from these).
SNAPSHOT_INTERVAL = 1.0
#: Seconds between keep-alive comments; well under the usual 30-60 s proxy read timeouts.
HEARTBEAT_INTERVAL = 5.0
#: Events sent with the first snapshot and with a resync.
RECENT_EVENTS = 30
#: What the browser waits before reconnecting a dropped stream, in milliseconds.
RETRY_MS = 2000


class _Stream:
    """One connected dashboard: a bounded queue of pool events and a wake-up flag."""

    def __init__(self, limit: int) -> None:
        self.queue: deque[Event] = deque(maxlen=limit)
        self.dropped = 0
        self.wake = asyncio.Event()
        self.closing = False

    def push(self, event: Event) -> None:
        """The ``EventLog`` listener: never blocks, never grows past the limit."""
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1  # deque drops the oldest on append
        self.queue.append(event)
        self.wake.set()

    def close(self) -> None:
        self.closing = True
        self.wake.set()


def _sse(event: str, data: object) -> bytes:
    payload = json.dumps(data, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


@functools.cache
def _page() -> tuple[bytes, str]:
    """The page with its CSS and JS inlined, and a Content-Security-Policy that allows
    exactly those two inline blocks and connections back to this origin, nothing else."""
    static = resources.files("lbproxy") / "static"
    html = (static / "dashboard.html").read_text(encoding="utf-8")
    css = (static / "dashboard.css").read_text(encoding="utf-8")
    js = (static / "dashboard.js").read_text(encoding="utf-8")
    page = html.replace("/*@CSS@*/", css).replace("/*@JS@*/", js)
    csp = (
        "default-src 'none'; "
        f"script-src {_csp_hash(js)}; "
        f"style-src {_csp_hash(css)}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return page.encode(), csp


class DashboardHub:
    """The dashboard's handlers and its open streams, for one balancer."""

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer
        self.streams: set[_Stream] = set()
        self.max_streams = MAX_STREAMS
        self.queue_limit = QUEUE_LIMIT
        self.snapshot_interval = SNAPSHOT_INTERVAL
        # The public listener cuts an exchange silent for read_timeout: ping well within it.
        read_timeout = balancer.config.proxy.read_timeout
        self.heartbeat_interval = min(HEARTBEAT_INTERVAL, max(0.05, read_timeout / 3))
        self._closed = False

    # -- data ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The pool as the page draws it; ``served`` is cumulative (the page derives rates)."""
        pool = self.balancer.pool
        shares = pool.ring.shares()
        replicas: list[dict[str, Any]] = []
        for replica in pool.replicas():
            replicas.append(
                {
                    "name": replica.name,
                    "ring_id": replica.ring_id,
                    "state": replica.state.value,
                    "since": replica.since,
                    "url": replica.url,
                    "in_flight": replica.in_flight,
                    "served": replica.served_total,
                    "incarnations": replica.incarnations,
                    "ejections": replica.ejections,
                    "errors": sum(n for code, n in replica.by_status.items() if code >= 500),
                    "share": shares.get(replica.name, 0.0),
                }
            )
        return {
            "time": time.time(),
            "family": pool.family.name,
            "n": len(replicas),
            "up": sum(1 for r in pool.replicas() if r.state is ReplicaState.UP),
            "replicas": replicas,
            "shares": shares,
            "ring_builds": pool.ring_builds,
            "replacements": self.balancer.reconciler.replacements,
        }

    def recent_events(self) -> list[dict[str, Any]]:
        events = self.balancer.pool.events.since(0)[-RECENT_EVENTS:]
        return [e.as_dict() for e in events]

    # -- handlers --------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        if request.path.endswith("/"):
            # A relative stream URL only resolves from the slash-less page address.
            raise web.HTTPPermanentRedirect("../dashboard")
        body, csp = _page()
        return web.Response(
            body=body,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Cache-Control": "no-cache",
                "Content-Security-Policy": csp,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if self._closed:
            return self._unavailable("the balancer is shutting down")
        if len(self.streams) >= self.max_streams:
            return self._unavailable(
                f"too many dashboard streams open (limit {self.max_streams}); "
                "close another dashboard and retry"
            )
        stream = _Stream(self.queue_limit)
        self.streams.add(stream)
        unsubscribe = self.balancer.pool.events.subscribe(stream.push)
        try:
            resp = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream; charset=utf-8",
                    "Cache-Control": "no-cache, no-transform",
                    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
                }
            )
            await resp.prepare(request)
            await self._pump(stream, resp)
        except ConnectionError:
            pass  # the browser went away mid-write: the normal end of a dashboard
        finally:
            unsubscribe()
            self.streams.discard(stream)
        return resp

    def _unavailable(self, why: str) -> web.Response:
        return web.json_response(
            failure_body(why), status=503, headers={"Retry-After": str(RETRY_MS // 1000)}
        )

    async def _pump(self, stream: _Stream, resp: web.StreamResponse) -> None:
        loop = asyncio.get_running_loop()
        first = self.snapshot()
        first["events"] = self.recent_events()
        stream.queue.clear()  # already in ``events``
        await resp.write(f"retry: {RETRY_MS}\n\n".encode() + _sse("snapshot", first))
        next_snapshot = loop.time() + self.snapshot_interval
        next_ping = loop.time() + self.heartbeat_interval
        while not stream.closing:
            delay = max(0.0, min(next_snapshot, next_ping) - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stream.wake.wait()
            stream.wake.clear()
            if stream.closing:
                break
            chunks: list[bytes] = []
            if stream.dropped:
                stream.dropped = 0
                stream.queue.clear()
                chunks.append(_sse("events", self.recent_events()))
            while stream.queue:
                chunks.append(_sse("pool", stream.queue.popleft().as_dict()))
            now = loop.time()
            if now >= next_snapshot:
                chunks.append(_sse("snapshot", self.snapshot()))
                next_snapshot = now + self.snapshot_interval
            if now >= next_ping:
                chunks.append(b": ping\n\n")
                next_ping = now + self.heartbeat_interval
            if chunks:
                await resp.write(b"".join(chunks))

    def close(self) -> None:
        """End every stream and refuse new ones: their handlers return at once instead of
        holding a graceful shutdown for its whole timeout."""
        self._closed = True
        for stream in list(self.streams):
            stream.close()

    async def _on_shutdown(self, app: web.Application) -> None:
        self.close()


DASHBOARD = web.AppKey("dashboard", DashboardHub)


def register(app: web.Application, balancer: Balancer) -> None:
    """Add the dashboard routes to ``app`` (idempotent); call before the app starts."""
    if DASHBOARD in app:
        return
    hub = DashboardHub(balancer)
    app[DASHBOARD] = hub
    app.router.add_get(PAGE_PATH, hub.page)
    app.router.add_get(PAGE_PATH + "/", hub.page)
    app.router.add_get(STREAM_PATH, hub.stream, allow_head=False)
    app.on_shutdown.append(hub._on_shutdown)


def close_streams(app: web.Application) -> None:
    """End the dashboard streams of ``app`` now (a no-op without a dashboard).

    ``on_shutdown`` does this too, but the public listener drains in-flight exchanges
    before the control app shuts down, and an open dashboard is one of them: call this
    first so the drain does not wait its whole timeout for a stream that never ends.
    """
    hub = app.get(DASHBOARD)
    if hub is not None:
        hub.close()
