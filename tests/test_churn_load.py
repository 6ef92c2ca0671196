"""bench/churn.py's open-loop load keeps its schedule through a stall and times each request
from when it was due (wrk2's correction for coordinated omission).

A closed loop's clients stop sending while the server stalls, so a stall shows up as a few
slow requests only; the open loop's requests keep coming due, and every one due during the
stall is timed until it was answered after it.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from tests.test_bench_settings import load_bench

pytestmark = pytest.mark.inprocess


async def _until(check: object) -> None:
    while not check():  # type: ignore[operator]
        await asyncio.sleep(0)


async def test_open_loop_times_requests_due_during_a_stall_from_when_they_were_due() -> None:
    churn = load_bench("churn")
    hold = asyncio.Event()
    release = asyncio.Event()
    held = 0

    async def home(request: web.Request) -> web.Response:
        nonlocal held
        if hold.is_set() and not release.is_set():
            held += 1
            await release.wait()
        return web.json_response({"message": "Hello from Server: a", "status": "successful"})

    app = web.Application()
    app.router.add_get("/home", home)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    clients = 4
    load = churn.Load(f"http://127.0.0.1:{port}", clients, seed=1, rate=400.0)
    task = asyncio.create_task(load.run())
    try:
        await _until(lambda: len(load.samples) >= 20)
        loop = asyncio.get_running_loop()
        hold.set()
        held_from = loop.time()
        # Every connection is held; the schedule still brings requests due (waiting for a
        # connection), many more than a closed loop of `clients` would have sent.
        await _until(lambda: held >= clients and len(load.started) >= 3 * clients)
        released_at = loop.time()
        release.set()
        due_in_stall = [k for k, t in load.started.items() if held_from <= t < released_at]
        await _until(lambda: not any(k in load.started for k in due_in_stall))
    finally:
        load.stop.set()
        await task
        await runner.cleanup()
    during = [s for s in load.samples if held_from <= s.start < released_at]
    assert len(during) > clients
    assert all(s.ok for s in during)
    # Timed from when it was due: each one ends after the stall it waited out.
    assert all(s.start + s.latency >= released_at for s in during)
