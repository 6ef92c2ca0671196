"""Shared fixtures: a real-HTTP in-process replica backend and a running balancer.

``InProcessBackend`` runs the real ``server_app`` application on real loopback sockets
inside the test's event loop, so the fast tests exercise the balancer's whole HTTP path
without paying a process spawn per replica; failure drills (crash, hang) are methods.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import time
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import settings

from lbproxy.app import Balancer
from lbproxy.backends.base import BackendEvent, DeathCallback, ReplicaHandle
from lbproxy.backends.process import ProcessBackend
from lbproxy.config import Config, HealthConfig
from lbproxy.errors import BackendError
from lbproxy.server import BalancerServer
from lbproxy_tools.launcher import free_loopback_port
from server_app import create_app as create_replica_app

#: The tiers, in the order ``make test`` runs them (scripts/test-tiers.sh). Every test
#: declares one of the first four (``pytestmark = pytest.mark.unit`` ...); a test that also
#: carries ``slow`` runs in the last tier, whatever its base tier.
TIERS = ("unit", "inprocess", "process", "docker", "slow")
BASE_TIERS = TIERS[:4]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--tier",
        type=_tier_list,
        help="run only these tiers' tests, comma-separated, in tier order (unit,inprocess); "
        "several tiers share one session, which stops at the end of the first failing tier",
    )


def _tier_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in TIERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated names out of {TIERS}")
    return tuple(name for name in TIERS if name in names)


def tier_of(item: pytest.Item) -> str | None:
    """``slow`` when marked so, else the closest of unit/inprocess/process/docker."""
    if item.get_closest_marker("slow") is not None:
        return "slow"
    return next((m.name for m in item.iter_markers() if m.name in BASE_TIERS), None)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test without a tier (before ``-m`` deselects anything), then pick ``--tier``.

    A test without a tier would silently run in no tier of ``make test``; failing the
    collection makes every new file say where it belongs. Several tiers run in tier order
    (a stable sort: files keep their order within a tier), and each must hold tests.
    """
    untiered = [
        item.nodeid
        for item in items
        if not any(item.get_closest_marker(name) for name in BASE_TIERS)
    ]
    if untiered:
        shown = "\n  ".join(untiered[:20])
        raise pytest.UsageError(
            f"{len(untiered)} test(s) declare no tier; add pytestmark = pytest.mark.unit "
            f"(or inprocess, process, docker) to their file:\n  {shown}"
        )
    tiers: tuple[str, ...] | None = config.getoption("--tier")
    if tiers is None:
        return
    keep = sorted(
        (item for item in items if tier_of(item) in tiers),
        key=lambda item: tiers.index(tier_of(item)),
    )
    dropped = [item for item in items if tier_of(item) not in tiers]
    if len(tiers) > 1:
        # One session for several tiers: pytest's "nothing collected" exit cannot say that
        # one of them lost its tests (the docker tier may be empty: no engine, no tests).
        empty = [t for t in tiers if t != "docker" and not any(tier_of(i) == t for i in keep)]
        if empty:
            raise pytest.UsageError(f"tier(s) {', '.join(empty)} collected no tests")
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


class _TierClock:
    """When several tiers share a session: each tier's time and outcome, and the stop at the
    end of the first tier that failed (``make test``'s contract, without paying pytest's
    start-up and collection once per tier)."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.failed: dict[str, int] = {}
        self.current = "?"

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        tier = self.current = tier_of(item) or "?"
        self.started.setdefault(tier, time.monotonic())
        try:
            return (yield)
        finally:
            self.ended[tier] = time.monotonic()
            next_tier = tier_of(nextitem) if nextitem is not None else None
            if next_tier != tier and nextitem is not None and self.failed.get(tier):
                item.session.shouldfail = f"tier {tier} failed; later tiers not run"

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:  # a failed call, or an error in its setup or teardown
            self.failed[self.current] = self.failed.get(self.current, 0) + 1

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        for tier, start in self.started.items():
            took = self.ended.get(tier, start) - start
            verdict = f"{self.failed[tier]} failed" if self.failed.get(tier) else "passed"
            terminalreporter.write_line(f"== tier {tier} {verdict} in {took:.1f} s")


def pytest_configure(config: pytest.Config) -> None:
    tiers = config.getoption("--tier", None)
    if tiers is not None and len(tiers) > 1:
        config.pluginmanager.register(_TierClock(), "tier-clock")


@pytest.fixture(scope="session")
def images() -> None:
    """The Docker tier's images, built when stale (scripts/ensure-images.sh, idempotent;
    minutes on a busy machine the first time). A failed build fails the test: the docker
    tier runs only where an engine answers, and then it must not skip."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        ["bash", "scripts/ensure-images.sh"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the images failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


# Property tests explore with a fixed seed: CI must not fail on a rare draw nobody can
# reproduce. HYPOTHESIS_PROFILE=explore draws fresh examples for local exploration.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@dataclass
class _Running:
    handle: ReplicaHandle
    runner: web.AppRunner
    hung: asyncio.Event


class InProcessBackend:
    """Replicas as aiohttp apps in this process, on their own loopback ports."""

    default_prefix = "Server "

    def __init__(self) -> None:
        self.running: dict[str, _Running] = {}
        self.launched: list[str] = []
        self.fail_names: set[str] = set()
        self._ids = itertools.count(1)
        self._on_death: DeathCallback | None = None
        self._validator = ProcessBackend(Config())
        #: ``GET /_t/hold`` on every replica waits for this: a test holds requests in
        #: flight for exactly as long as it looks at them, then sets it.
        self.release = asyncio.Event()

    def validate_name(self, name: object) -> str:
        return self._validator.validate_name(name)

    async def open(self, on_death: DeathCallback) -> None:
        self._on_death = on_death

    async def close(self) -> None:
        for entry in list(self.running.values()):
            await entry.runner.cleanup()
        self.running.clear()

    async def adopt(self) -> list[ReplicaHandle]:
        return []

    async def launch(self, name: str, ring_id: int) -> ReplicaHandle:
        self.launched.append(name)
        if name in self.fail_names:
            raise BackendError(f"refusing to start {name!r} (test)")
        hung = asyncio.Event()
        app = create_replica_app(name)

        @web.middleware
        async def maybe_hang(
            request: web.Request, handler: aiohttp.typedefs.Handler
        ) -> web.StreamResponse:
            if hung.is_set():
                await asyncio.sleep(3600)
            return await handler(request)

        app.middlewares.append(maybe_hang)
        add_test_routes(app, name, self.release)
        # A short shutdown timeout: a hung replica is cut off, as SIGKILL would.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        port = free_loopback_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        handle = ReplicaHandle(name, f"http://127.0.0.1:{port}", f"t{next(self._ids)}", ring_id)
        self.running[handle.backend_id] = _Running(handle, runner, hung)
        return handle

    async def stop(self, handle: ReplicaHandle, *, timeout: float) -> None:
        entry = self.running.pop(handle.backend_id, None)
        if entry is not None:
            await entry.runner.cleanup()

    async def list(self) -> list[ReplicaHandle]:
        return [e.handle for e in self.running.values()]

    def live(self, name: str) -> _Running:
        return next(e for e in self.running.values() if e.handle.name == name)

    async def crash(self, name: str) -> None:
        """The replica dies and the backend notices (like a process exit)."""
        entry = self.live(name)
        self.running.pop(entry.handle.backend_id)
        await entry.runner.cleanup()
        assert self._on_death is not None
        self._on_death(BackendEvent(name, entry.handle.backend_id, "crashed (test)"))

    def hang(self, name: str) -> None:
        """The replica still runs but stops answering: only heartbeats can tell."""
        self.live(name).hung.set()


def add_test_routes(app: web.Application, name: str, release: asyncio.Event) -> None:
    """Extra replica endpoints (test backend only) that exercise the proxy's edge cases."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "replica": name,
                "method": request.method,
                "path": request.path_qs,
                "headers": {k: v for k, v in request.headers.items()},
                "body_len": len(body),
                "body_head": body[:64].decode("latin-1"),
            }
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("size", "1000000"))
        resp = web.StreamResponse(headers={"X-Stream": "yes", "Connection": "keep-alive"})
        await resp.prepare(request)  # no Content-Length: chunked
        chunk = b"x" * 65536
        sent = 0
        while sent < size:
            part = chunk[: min(len(chunk), size - sent)]
            await resp.write(part)
            sent += len(part)
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.Response(text="slow")

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="status")

    app.router.add_route("*", "/_t/echo", echo)
    app.router.add_get("/_t/stream", stream)
    app.router.add_get("/_t/slow", slow)

    async def hold(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="held")

    app.router.add_get("/_t/hold", hold)

    async def hop(request: web.Request) -> web.Response:
        return web.Response(text="hop", headers={"Connection": "keep-alive, X-Hop", "X-Hop": "1"})

    app.router.add_get("/_t/hop", hop)
    app.router.add_route("*", "/_t/status/{code}", status)


#: Maglev table size for the in-process tests: prime and over 100 times their largest pool,
#: so the balance is the family's, while a ring build costs about 1 ms instead of the
#: default 65537-entry table's 100+ ms of pure Python per build (most of this tier's CPU
#: time, and a stall that made 0.2 s heartbeats miss on a busy machine). The ring's own
#: tests (tests/test_ring*.py) use the full size.
TEST_MAGLEV_SLOTS = 1031


def fast_config(**changes: object) -> Config:
    """Short intervals so failure detection takes milliseconds in tests."""
    base = Config(
        host="127.0.0.1",
        port=0,
        replicas=3,
        start_timeout=5.0,
        stop_timeout=1.0,
        health=HealthConfig(interval=0.05, timeout=0.2, fall=2, rise=1),
    )
    config = base.replace(**changes)
    if config.slots is None and config.hash.startswith("maglev"):
        config = config.replace(slots=TEST_MAGLEV_SLOTS)
    return config


@dataclass
class BalancerUnderTest:
    client: aiohttp.ClientSession
    url: str
    balancer: Balancer
    backend: InProcessBackend
    app: web.Application  # the control app: admin endpoints, views, the dashboard

    async def get_json(self, path: str, **kw: object) -> tuple[int, object]:
        async with self.client.get(self.url + path, **kw) as resp:  # type: ignore[arg-type]
            return resp.status, await resp.json(content_type=None)


async def start_balancer(config: Config, backend: InProcessBackend) -> BalancerServer:
    server = BalancerServer(config, backend)
    await server.start()
    return server


@pytest.fixture
async def lb(request: pytest.FixtureRequest) -> AsyncIterator[BalancerUnderTest]:
    marker = request.node.get_closest_marker("lbconfig")
    config = fast_config(**(marker.kwargs if marker else {}))
    backend = InProcessBackend()
    server = await start_balancer(config, backend)
    async with aiohttp.ClientSession() as client:
        yield BalancerUnderTest(client, server.url, server.balancer, backend, server.app)
    await server.stop()
    assert backend.running == {}, "the balancer left replicas running"


async def wait_for(predicate: object, timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``predicate`` until true; the bound is a hang guard, not a performance claim."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)
