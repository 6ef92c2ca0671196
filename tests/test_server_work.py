"""server_app's optional per-request work (server_app/work.py), used to make replicas the
bottleneck in A-5; off by default so SPEC's replica is unchanged."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from lbproxy_tools.launcher import free_loopback_port
from server_app import create_app
from server_app.work import Work

pytestmark = pytest.mark.inprocess


def test_off_by_default_and_read_from_the_environment() -> None:
    assert not Work.from_env({}).active
    work = Work.from_env(
        {"SERVER_DELAY_MS": "20", "SERVER_CPU_MS": "1.5", "SERVER_CONCURRENCY": "4"}
    )
    assert (work.delay, work.cpu, work.concurrency) == (0.02, 0.0015, 4)
    assert work.active


@pytest.mark.parametrize("raw", ["x", "-1", "nan"])
def test_bad_values_stop_the_replica_with_a_reason(raw: str) -> None:
    with pytest.raises(SystemExit, match="SERVER_DELAY_MS"):
        Work.from_env({"SERVER_DELAY_MS": raw})


class _Counting(Work):
    """Counts how many requests are inside their service time at once."""

    active_now = 0
    most = 0

    async def _once(self) -> None:
        type(self).active_now += 1
        type(self).most = max(type(self).most, type(self).active_now)
        try:
            await super()._once()
        finally:
            type(self).active_now -= 1


async def test_concurrency_caps_requests_served_at_once() -> None:
    work = _Counting(delay=0.01, concurrency=2)
    await asyncio.gather(*(work.perform() for _ in range(7)))
    assert _Counting.most == 2


async def test_home_keeps_spec_body_and_heartbeat_never_waits() -> None:
    release = asyncio.Event()

    class Blocking(Work):
        async def _once(self) -> None:
            await release.wait()

    runner = web.AppRunner(create_app("S1", Blocking(concurrency=1)))
    await runner.setup()
    port = free_loopback_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as client:

            async def home() -> object:
                async with client.get(url + "/home") as r:
                    return await r.json()

            homes = [asyncio.create_task(home()) for _ in range(3)]
            async with client.get(url + "/heartbeat") as r:
                assert r.status == 200
            assert not any(t.done() for t in homes)  # /home waits, /heartbeat did not
            release.set()
            for body in await asyncio.gather(*homes):
                assert body == {"message": "Hello from Server: S1", "status": "successful"}
    finally:
        await runner.cleanup()
