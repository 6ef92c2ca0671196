"""The live dashboard: its page, its server-sent-events stream, and a real headless browser.

The balancer under test is the real one (public listener relaying to the control app);
``dashboard.register`` is called on the control app here, in the fixture, because wiring it
into ``create_app`` is the app module owner's line to add (calling it twice is harmless).

The browser test needs Debian's ``chromium`` (``scripts/install-chromium.sh``) and skips
without it. With ``LBPROXY_DASHBOARD_SCREENSHOT=docs/img/dashboard.png`` it runs longer and
saves its screenshot there: that is how the documentation's picture is made.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import random
import shutil
import signal
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lbproxy.config import Config, HealthConfig, ProxyConfig
from lbproxy.server import BalancerServer
from lbproxy.views import dashboard, openapi
from lbproxy.views.dashboard import DASHBOARD, DashboardHub
from lbproxy_tools.launcher import free_loopback_port
from tests.conftest import BalancerUnderTest, InProcessBackend, fast_config, wait_for

pytestmark = pytest.mark.inprocess

PAGE = "/lbproxy/dashboard"
STREAM = "/lbproxy/dashboard/stream"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT_OUT = os.environ.get("LBPROXY_DASHBOARD_SCREENSHOT")


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def hub(lb: BalancerUnderTest) -> DashboardHub:
    """The dashboard create_app registered on the balancer's control app."""
    hub = lb.app[DASHBOARD]
    assert hub.balancer is lb.balancer
    return hub


class SSE:
    """A minimal server-sent-events reader over an aiohttp response."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.comments: list[str] = []
        self.retry: int | None = None

    async def next(self, timeout: float = 5.0) -> tuple[str, Any]:
        event, data = "message", list[str]()
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\n").rstrip("\r")
                if not line:
                    if data:
                        return event, json.loads("\n".join(data))
                    event = "message"
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "retry":
                    self.retry = int(value)

    async def pings(self, enough: Callable[[], bool], timeout: float = 5.0) -> None:
        """Read comment lines until ``enough()``; an event (or the end) before that fails."""
        async with asyncio.timeout(timeout):
            while not enough():
                raw = await self.resp.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\n").rstrip("\r")
                assert line.startswith(":") or not line, f"not a comment: {line!r}"
                if line:
                    self.comments.append(line[1:].strip())

    async def until(
        self, predicate: Callable[[str, Any], bool], timeout: float = 5.0
    ) -> tuple[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                event, data = await self.next(timeout)
                if predicate(event, data):
                    return event, data


@contextlib.asynccontextmanager
async def open_stream(lb: BalancerUnderTest) -> AsyncIterator[SSE]:
    async with lb.client.get(lb.url + STREAM, timeout=aiohttp.ClientTimeout(total=None)) as resp:
        assert resp.status == 200, await resp.text()
        yield SSE(resp)


def listeners(lb: BalancerUnderTest) -> int:
    return len(lb.balancer.pool.events._listeners)


# -- the page ------------------------------------------------------------------------------


async def test_page_is_self_contained_html(lb: BalancerUnderTest) -> None:
    async with lb.client.get(lb.url + PAGE) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        csp = resp.headers["Content-Security-Policy"]
        html = await resp.text()
    assert '<svg id="ring"' in html and "new EventSource(STREAM_URL)" in html
    assert 'STREAM_URL = "dashboard/stream"' in html  # relative: works behind a prefix
    # Nothing from elsewhere: no src/href to another origin, and the CSP forbids it anyway.
    for attr in ("src=", "href="):
        for part in html.split(attr)[1:]:
            assert not part.lstrip("\"'").startswith(("http:", "https:", "//")), part[:60]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp


async def test_page_with_trailing_slash_redirects(lb: BalancerUnderTest) -> None:
    async with lb.client.get(lb.url + PAGE + "/", allow_redirects=False) as resp:
        assert resp.status == 308
        assert resp.headers["Location"] == "../dashboard"
    async with lb.client.get(lb.url + PAGE + "/") as resp:
        assert resp.status == 200 and resp.url.path == PAGE


# -- the stream ----------------------------------------------------------------------------


async def test_stream_starts_with_a_full_snapshot(lb: BalancerUnderTest) -> None:
    async with open_stream(lb) as sse:
        assert sse.resp.content_type == "text/event-stream"
        assert sse.resp.headers["Cache-Control"].startswith("no-cache")
        event, snap = await sse.next()
    assert event == "snapshot"
    assert sse.retry == dashboard.RETRY_MS
    assert snap["family"] == lb.balancer.pool.family.name
    names = [r["name"] for r in snap["replicas"]]
    assert names == ["Server 1", "Server 2", "Server 3"]
    assert snap["n"] == snap["up"] == 3
    assert {r["state"] for r in snap["replicas"]} == {"up"}
    assert sum(r["share"] for r in snap["replicas"]) == pytest.approx(1.0)
    assert set(snap["shares"]) == set(names)
    for replica in snap["replicas"]:
        assert replica["ring_id"] >= 1 and replica["incarnations"] == 1
        assert {"in_flight", "served", "since", "url", "ejections", "errors"} <= set(replica)
    kinds = [e["kind"] for e in snap["events"]]
    assert kinds.count("added") == 3 and kinds.count("up") == 3
    assert len(snap["events"]) <= dashboard.RECENT_EVENTS


async def test_add_arrives_on_the_stream_as_it_happens(
    lb: BalancerUnderTest, hub: DashboardHub
) -> None:
    hub.snapshot_interval = 0.05  # the snapshot after the add comes soon
    async with open_stream(lb) as sse:
        await sse.next()
        async with lb.client.post(lb.url + "/add", json={"n": 1}) as resp:
            assert resp.status == 200
            new = (await resp.json())["message"]["replicas"][-1]
        seen: list[str] = []

        def is_up(event: str, data: Any) -> bool:
            if event == "pool" and data["replica"] == new:
                seen.append(data["kind"])
            return "up" in seen

        await sse.until(is_up, timeout=5.0)
        assert "added" in seen
        _, snap = await sse.until(lambda event, _: event == "snapshot", timeout=3.0)
        assert new in [r["name"] for r in snap["replicas"]] and snap["n"] == 4


async def test_snapshots_and_keepalive_comments_repeat(
    lb: BalancerUnderTest, hub: DashboardHub
) -> None:
    hub.snapshot_interval = 0.05
    hub.heartbeat_interval = 0.2
    async with open_stream(lb) as sse:
        times = []
        for _ in range(6):
            _, snap = await sse.until(lambda event, _: event == "snapshot", timeout=2.0)
            times.append(snap["time"])
        await sse.until(lambda *_: bool(sse.comments), timeout=2.0)
    assert times == sorted(times) and times[-1] > times[0]
    assert "ping" in sse.comments


@pytest.mark.lbconfig(proxy=ProxyConfig(read_timeout=0.6))
async def test_stream_outlives_the_front_end_read_timeout(
    lb: BalancerUnderTest, hub: DashboardHub
) -> None:
    """The public listener cuts an upstream silent for read_timeout; pings keep the stream
    (the hub pings at a third of the listener's read timeout when that is short)."""
    assert hub.heartbeat_interval == pytest.approx(0.2)
    hub.snapshot_interval = 60.0  # nothing but pings after the first snapshot
    loop = asyncio.get_running_loop()
    async with open_stream(lb) as sse:
        await sse.next()
        quiet_since = loop.time()
        # Only comments for 1.5 read timeouts (an event or the stream's end fails ``pings``).
        # The timeout is not shorter: a loop stalled that long on a busy machine would cut
        # the stream whatever the pings.
        await sse.pings(lambda: len(sse.comments) >= 4 and loop.time() - quiet_since > 0.9)
        lb.balancer.pool.events.emit("stopped", "Server 9", "probe")
        event, data = await sse.next(timeout=2.0)  # still the same, live stream
        assert event == "pool" and data["detail"] == "probe"


async def test_disconnect_leaves_no_subscriber_behind(
    lb: BalancerUnderTest, hub: DashboardHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    hub.snapshot_interval = 0.05  # the next write, a snapshot, finds the connection gone
    before = listeners(lb)
    streams = []
    for _ in range(3):
        resp = await lb.client.get(lb.url + STREAM)
        await SSE(resp).next()
        streams.append(resp)
    assert listeners(lb) == before + 3 and len(hub.streams) == 3
    for resp in streams:
        resp.close()  # the browser tab goes away mid-stream
    await wait_for(lambda: listeners(lb) == before and not hub.streams, timeout=5.0)
    # and the pool keeps emitting without anyone to tell
    async with lb.client.post(lb.url + "/add", json={"n": 1}) as resp:
        assert resp.status == 200
    assert listeners(lb) == before
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == []


async def test_stream_cap_answers_503_in_spec_shape(
    lb: BalancerUnderTest, hub: DashboardHub
) -> None:
    hub.max_streams = 2
    hub.snapshot_interval = 0.05  # the next write, a snapshot, finds a closed stream gone
    async with open_stream(lb) as one, open_stream(lb) as two:
        await one.next()
        await two.next()
        async with lb.client.get(lb.url + STREAM) as resp:
            assert resp.status == 503
            # RFC 9110 15.6.4 / 10.2.3: when to come back, as the OpenAPI document declares
            refused = openapi.OPENAPI["paths"][STREAM]["get"]["responses"]["503"]
            (declared,) = refused["headers"]["Retry-After"]["schema"]["enum"]
            assert resp.headers["Retry-After"] == declared == str(dashboard.RETRY_MS // 1000)
            body = await resp.json()
        assert body["status"] == "failure"
        assert body["message"].startswith("<Error> too many dashboard streams")
    await wait_for(lambda: not hub.streams)
    async with open_stream(lb) as three:  # a slot is free again
        assert (await three.next())[0] == "snapshot"


async def test_a_slow_client_queue_is_bounded(lb: BalancerUnderTest, hub: DashboardHub) -> None:
    """Events pile up faster than the stream drains: the oldest go, a resync replaces them."""
    hub.queue_limit = 4
    async with open_stream(lb) as sse:
        await sse.next()
        (stream,) = hub.streams
        events = lb.balancer.pool.events
        for i in range(50):  # no await in between: the stream cannot drain meanwhile
            events.emit("stopped", "Server 9", f"burst {i}")
        assert len(stream.queue) == 4 and stream.dropped == 46
        event, recent = await sse.until(lambda event, _: event in ("events", "pool"))
    assert event == "events"
    assert len(recent) == dashboard.RECENT_EVENTS
    assert recent[-1]["detail"] == "burst 49"


async def test_closing_ends_streams_promptly(lb: BalancerUnderTest, hub: DashboardHub) -> None:
    """What on_shutdown (and ``dashboard.close_streams``) does: streams end, new ones 503."""
    before = listeners(lb)
    async with open_stream(lb) as sse:
        await sse.next()
        started = time.monotonic()
        hub.close()
        with pytest.raises(EOFError):
            while True:
                await sse.next(timeout=3.0)
        assert time.monotonic() - started < 2.0
    assert listeners(lb) == before and not hub.streams
    async with lb.client.get(lb.url + STREAM) as resp:
        assert resp.status == 503
        assert "shutting down" in (await resp.json())["message"]


async def test_register_is_idempotent_and_close_streams_is_safe() -> None:
    app = web.Application()
    dashboard.close_streams(app)  # no dashboard: nothing to do
    fake: Any = SimpleNamespace(config=Config())
    dashboard.register(app, fake)
    dashboard.register(app, fake)
    paths = [resource.canonical for resource in app.router.resources()]
    assert sorted(paths) == [PAGE, PAGE + "/", STREAM]
    dashboard.close_streams(app)
    assert app[DASHBOARD]._closed


async def test_balancer_stops_with_a_dashboard_open(caplog: pytest.LogCaptureFixture) -> None:
    """Shutdown with a browser attached: bounded, the stream ends, nothing logged as error."""
    caplog.set_level(logging.WARNING)
    config = fast_config(stop_timeout=1.0)
    backend = InProcessBackend()
    server = BalancerServer(config, backend)
    await server.start()
    hub = server.app[DASHBOARD]
    try:
        async with aiohttp.ClientSession() as client:
            resp = await client.get(server.url + STREAM)
            sse = SSE(resp)
            await sse.next()
            started = time.monotonic()
            await server.stop()
            elapsed = time.monotonic() - started
            with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
                while True:
                    await sse.next(timeout=3.0)
            resp.close()
    finally:
        await server.stop()
    assert elapsed < config.stop_timeout + 3.0
    assert not hub.streams
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert noisy == [], [r.getMessage() for r in noisy]


async def test_dashboard_on_a_separate_admin_port() -> None:
    """With --admin-port the control app serves the page and stream itself; it stops fast."""
    admin_port = free_loopback_port()
    server = BalancerServer(fast_config(admin_port=admin_port), InProcessBackend())
    await server.start()
    hub = server.app[DASHBOARD]
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        async with aiohttp.ClientSession() as client:
            async with client.get(admin + PAGE) as resp:
                assert resp.status == 200 and resp.content_type == "text/html"
            resp = await client.get(admin + STREAM)
            event, snap = await SSE(resp).next()
            assert event == "snapshot" and snap["n"] == 3
            started = time.monotonic()
            await server.stop()
            assert time.monotonic() - started < 3.0
            resp.close()
    finally:
        await server.stop()
    assert not hub.streams


# -- a real browser --------------------------------------------------------------------------


class Browser:
    """Headless Debian chromium driven over the DevTools protocol (a websocket).

    Not ``chromium --screenshot --virtual-time-budget``: virtual time does not advance
    while a fetch is pending and an EventSource never finishes, so that form hangs; and
    ``--dump-dom`` alone dumps at the load event, before the first snapshot arrives.
    """

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        self.width, self.height = width, height
        self.requests: list[str] = []
        self.problems: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._profile = tempfile.mkdtemp(prefix="lbproxy-chromium-")
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = 0

    async def __aenter__(self) -> Browser:
        assert CHROMIUM is not None
        self._proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={self._profile}",
            f"--window-size={self.width},{self.height}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await self._attach()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _attach(self) -> None:
        port_file = Path(self._profile) / "DevToolsActivePort"
        async with asyncio.timeout(30):
            while not port_file.exists() or not port_file.read_text().strip():
                assert self._proc is not None and self._proc.returncode is None, "chromium exited"
                await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self._session = aiohttp.ClientSession()
        async with asyncio.timeout(30):
            while True:
                async with self._session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    pages = [t for t in await resp.json() if t["type"] == "page"]
                if pages:
                    break
                await asyncio.sleep(0.05)
        self._ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")
        for domain in ("Page", "Runtime", "Log", "Network"):
            await self.call(f"{domain}.enable")
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Network.requestWillBeSent":
                self.requests.append(params["request"]["url"])
            elif method == "Runtime.exceptionThrown":
                self.problems.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                self.problems.append(params["entry"]["text"])
            elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
                self.problems.append(json.dumps(params["args"])[:500])

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._ws is not None
        self._ids += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._ids] = future
        await self._ws.send_json({"id": self._ids, "method": method, "params": params})
        async with asyncio.timeout(30):
            reply = await future
        assert "error" not in reply, f"{method}: {reply['error']}"
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def wait_until(self, expression: str, timeout: float) -> None:
        # Mid-navigation the document may not have a body yet: that is "not yet", not a bug.
        guarded = f"(() => {{ try {{ return !!({expression}); }} catch {{ return false; }} }})()"
        deadline = time.monotonic() + timeout
        while not await self.evaluate(guarded):
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never satisfied: {expression}")
            await asyncio.sleep(0.1)

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def screenshot(self) -> bytes:
        shot = await self.call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self.call("Browser.close")
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._session is not None:
            await self._session.close()
        if self._proc is not None and self._proc.returncode is None:
            try:
                async with asyncio.timeout(10):
                    await self._proc.wait()
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def png_colours(png: bytes) -> set[tuple[int, int, int]]:
    """Distinct RGB colours of a PNG (Pillow: the dev extra installs it)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        counted = image.convert("RGB").getcolors(maxcolors=1 << 24) or []
    return {(c[0], c[1], c[2]) for _, c in counted if isinstance(c, tuple)}


def hex_rgb(colour: str) -> tuple[int, int, int]:
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))


async def _gentle_load(url: str, stop: asyncio.Event) -> int:
    """A few hundred requests per second: enough to draw, little enough to leave CPU."""
    sent = 0
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal sent
            while not stop.is_set():
                rid = str(random.randint(100000, 999999))
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(
                        url + "/home",
                        headers={"X-Request-ID": rid},
                        timeout=aiohttp.ClientTimeout(total=5),
                    ) as resp:
                        await resp.read()
                        sent += 1
                await asyncio.sleep(0.01)

        await asyncio.gather(*(worker() for _ in range(6)))
    return sent


ALL_UP_AND_REPLACED = """(() => {
  const rows = [...document.querySelectorAll('#replicas tbody tr')];
  return rows.length === 3
    && rows.every(r => r.querySelector('.pill').textContent === 'up')
    && !!document.querySelector('#events tr[data-kind="replacing"]')
    && !!document.querySelector('#events tr[data-kind="died"]');
})()"""

#: What the assertions below read, waited for instead of sampled after a sleep.
SETTLED = """(() => {
  const cell = document.querySelector(
    '#replicas tr[data-replica="Server 2"] td[data-col="incarnations"]');
  return Number(document.getElementById('total-rps').textContent) > 0
    && cell !== null && cell.textContent === '2'
    && document.querySelectorAll('#ring text.label').length === 3;
})()"""


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium/chromium-browser binary (scripts/install-chromium.sh installs it)",
)
async def test_dashboard_in_a_real_browser() -> None:
    """Real replica processes under load, one killed; chromium shows it all, live."""
    docs = SCREENSHOT_OUT is not None
    config = Config(
        host="127.0.0.1",
        port=0,
        replicas=3,
        backend="process",
        start_timeout=10.0,
        stop_timeout=2.0,
        health=HealthConfig(interval=0.2, timeout=0.5, fall=2, rise=1),
    )
    server = BalancerServer(config)
    await server.start()
    stop_load = asyncio.Event()
    load: asyncio.Task[int] | None = None
    try:
        url = server.url
        pool = server.balancer.pool
        load = asyncio.create_task(_gentle_load(url, stop_load), name="dashboard-load")
        async with Browser() as browser:
            await browser.goto(url + PAGE)
            await browser.wait_until(
                "Number(document.body.dataset.snapshots || 0) >= 3", timeout=20
            )
            if docs:
                await asyncio.sleep(35)  # a throughput history worth drawing

            victim = pool.get("Server 2")
            assert victim is not None and victim.handle is not None
            os.kill(int(victim.handle.backend_id), signal.SIGKILL)
            await browser.wait_until(ALL_UP_AND_REPLACED, timeout=30)
            await browser.wait_until(
                "Number(document.body.dataset.snapshots || 0) >= 6", timeout=20
            )
            if docs:
                await asyncio.sleep(12)  # a longer history for the picture; nothing waits on it
            await browser.wait_until(SETTLED, timeout=20)

            names = await browser.evaluate(
                "[...document.querySelectorAll('#replicas tbody tr')].map(r => r.dataset.replica)"
            )
            ring_labels = await browser.evaluate(
                "[...document.querySelectorAll('#ring text.label')].map(t => t.textContent)"
            )
            family = await browser.evaluate("document.getElementById('family').textContent")
            rps = await browser.evaluate("document.getElementById('total-rps').textContent")
            incarnations = await browser.evaluate(
                "document.querySelector("
                '\'#replicas tr[data-replica="Server 2"] td[data-col="incarnations"]\')'
                ".textContent"
            )
            conn = await browser.evaluate("document.getElementById('conn').className")
            png = await browser.screenshot()
            requests = list(browser.requests)
            problems = list(browser.problems)
    finally:
        stop_load.set()
        sent = await load if load is not None else 0
        await server.stop()

    assert names == ["Server 1", "Server 2", "Server 3"]
    assert sorted(ring_labels) == names
    assert family == pool.family.name == "maglev"
    assert float(rps) > 0, rps
    assert incarnations == "2"
    assert "live" in conn
    assert sent > 0
    # Everything the page loaded came from the balancer itself.
    assert requests and all(r.startswith(url + "/lbproxy/dashboard") for r in requests), requests
    assert problems == []

    assert png_size(png) == (1280, 900)
    colours = png_colours(png)
    assert len(colours) > 200, "the screenshot looks blank"
    # the first three replica colours of the palette are drawn (ring arcs, swatches)
    for colour in ("#4e9af1", "#f5a623", "#b57edc"):
        assert hex_rgb(colour) in colours, colour
    if SCREENSHOT_OUT:
        _save(Path(SCREENSHOT_OUT), png)


def _save(path: Path, png: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
