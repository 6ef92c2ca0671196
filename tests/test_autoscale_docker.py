"""Autoscaling on the Docker backend (issue 12): containers come and go with the load.

`lbproxy serve --backend docker --autoscale 1:3` runs on the host (127.0.0.1); its replicas
are real containers of lbproxy-server:latest with a 50 ms service time, so a closed-loop
load of 8 clients keeps about 8 requests in flight: at a target of 2 per replica the pool
grows to MAX. When the load stops, the pool shrinks back to MIN through /rm's drain.
Nothing may fail on the way, and when the balancer stops no container of the run's pool
is left. Windows are shrunk (0.5 s tick, 3 s stable window, 2 s scale-down delay) so the
test takes seconds; every wait is on the balancer's state or the engine's listing, bounded
only as a hang guard, and the load is bounded in requests.

Runs whenever `docker info` answers, and fails (never skips) when the engine is there but
the images cannot be built or the balancer cannot start.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from lbproxy_tools.launcher import docker_engine_answers, run_balancer
from lbproxy_tools.loadtest import Meter, make_ids, run_load

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

if not docker_engine_answers():
    pytest.skip("no Docker engine answers `docker info`", allow_module_level=True)

MIN, MAX = 1, 3
WORKERS = 8  # about 8 in flight at a target of 2 per replica: 4 wanted, MAX granted
REQUESTS = 20_000  # the load's bound; a stop ends it long before (about 160 req/s)


def _docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Run:
    url: str
    pool: str
    network: str

    def containers(self) -> list[str]:
        """The ids of this run's replica containers, in any state, as the engine lists them."""
        out = _docker("ps", "-aq", "--filter", f"label=lbproxy.control.pool={self.pool}")
        return out.split()


@pytest.fixture
def autoscaled(images: None) -> Iterator[Run]:
    run_id = uuid.uuid4().hex[:8]
    pool, network = f"lbproxy-as-{run_id}", f"lbproxy-as-net-{run_id}"
    flags = [
        "--backend", "docker", "--docker-image", "lbproxy-server:latest",
        "--pool", pool, "--docker-network", network,
        "--replica-env", "SERVER_DELAY_MS=50",
        "--autoscale", f"{MIN}:{MAX}", "--target-concurrency", "2",
        "--autoscale-tick", "0.5", "--autoscale-stable-window", "3",
        "--autoscale-panic-window", "1", "--autoscale-scale-down-delay", "2",
        "--heartbeat-interval", "0.5", "--heartbeat-timeout", "1",
        "--start-timeout", "30", "--stop-timeout", "10",
    ]  # fmt: skip
    run = Run("", pool, network)
    left: list[str] = []
    try:
        with run_balancer(*flags, replicas=MIN, fast_heartbeat=False, up_timeout=60) as lb:
            run = Run(lb.url, pool, network)
            yield run
        # The balancer stopped (SIGTERM): it removes every replica container it started.
        left = run.containers()
    finally:
        # Whatever happened above, leave no container or network of this run behind.
        stray = run.containers()
        if stray:
            _docker("rm", "-f", *stray, check=False)
        _docker("network", "rm", network, check=False)
    assert not left, f"the balancer left containers behind: {left}"


async def _status(s: aiohttp.ClientSession, url: str) -> list[dict[str, object]]:
    async with s.get(url + "/lbproxy/status") as r:
        assert r.status == 200
        replicas: list[dict[str, object]] = (await r.json())["message"]["replicas"]
        return replicas


async def _poll(check: Callable[[], Awaitable[bool]], what: str, timeout: float) -> float:
    """Seconds until ``check()`` holds (polled every 0.1 s); fails after ``timeout``."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def test_load_scales_containers_up_and_back_down_without_a_failure(
    autoscaled: Run,
) -> None:
    run = autoscaled
    async with aiohttp.ClientSession() as s:
        first = await _status(s, run.url)
        assert [r["state"] for r in first] == ["up"] and len(run.containers()) == MIN

        async def ready_is(n: int) -> bool:
            reps = await _status(s, run.url)
            return len(reps) == n and all(r["state"] == "up" for r in reps)

        stop = asyncio.Event()
        meter = Meter()
        load = asyncio.create_task(
            run_load(
                run.url,
                requests=REQUESTS,
                concurrency=WORKERS,
                ids=make_ids("random", REQUESTS, seed=12),
                stop=stop,
                meter=meter,
            )
        )
        try:
            # Up: one decision within a tick or two, then the containers start (~1-2 s each).
            grew = await _poll(lambda: ready_is(MAX), "the pool at MAX, every replica up", 60)
            at_peak = meter.done
            # The new replicas serve: the load goes on through the grown pool for a while.
            await _poll(
                lambda: asyncio.sleep(0, result=meter.done >= at_peak + 200), "load at MAX", 30
            )
            assert len(run.containers()) == MAX
            peak = await _status(s, run.url)
            assert all(int(str(r["served"])) > 0 for r in peak), peak
        finally:
            stop.set()
            result = await load
        # Down: no traffic, so after the stable window and the delay the pool returns to MIN
        # through /rm's drain, and the engine no longer lists the removed containers.
        shrank = await _poll(lambda: ready_is(MIN), "the pool back at MIN", 60)
        await _poll(
            lambda: asyncio.sleep(0, result=len(run.containers()) == MIN),
            "the removed containers gone from the engine",
            30,
        )
        async with s.get(run.url + "/lbproxy/events?since=0") as r:
            events = (await r.json())["message"]
    decisions = [e["detail"] for e in events if e["kind"] == "autoscale"]
    print(
        f"\nautoscale on docker: MAX ready after {grew:.1f}s of load, MIN after "
        f"{shrank:.1f}s without; {result.completed} requests, {result.rps:.0f} req/s"
    )
    assert result.errors == {} and result.ok == result.completed, result.errors
    assert result.completed < REQUESTS  # the stop ended it, not the bound
    assert any(f"desired={MAX}" in d for d in decisions), decisions
    assert any(d.startswith("scaled up") for d in decisions), decisions
    assert any(f"desired={MIN}" in d for d in decisions), decisions
