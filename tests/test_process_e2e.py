"""End to end on the process backend: a real `lbproxy serve`, real replica processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest

from lbproxy_tools.launcher import pid_alive, run_balancer
from tests.kill_under_load import kill_under_load

pytestmark = pytest.mark.process


async def test_spec_endpoints_on_real_processes() -> None:
    with run_balancer() as lb:
        async with aiohttp.ClientSession() as s:
            async with s.get(lb.url + "/rep") as r:
                assert await r.json() == {
                    "message": {"N": 3, "replicas": ["Server 1", "Server 2", "Server 3"]},
                    "status": "successful",
                }
            async with s.get(lb.url + "/home") as r:
                body = await r.json()
                assert r.status == 200 and body["status"] == "successful"
                assert body["message"].startswith("Hello from Server: Server ")
            async with s.post(lb.url + "/add", json={"n": 2, "hostnames": ["S5"]}) as r:
                assert (await r.json())["message"] == {
                    "N": 5,
                    "replicas": ["Server 1", "Server 2", "Server 3", "S5", "Server 4"],
                }
            async with s.delete(lb.url + "/rm", json={"n": 1, "hostnames": ["S5"]}) as r:
                assert (await r.json())["message"]["replicas"] == [
                    "Server 1",
                    "Server 2",
                    "Server 3",
                    "Server 4",
                ]
            async with s.get(lb.url + "/nope") as r:
                assert r.status == 400
                assert await r.json() == {
                    "message": "<Error> '/nope' endpoint does not exist in server replicas",
                    "status": "failure",
                }
            pids = await lb.replica_pids(s)
        assert len(pids) == 4
    # SIGTERM on the balancer stopped every replica it started.
    assert lb.proc.returncode == 0
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in pids.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not any(pid_alive(p) for p in pids.values())


async def test_kill_9_replica_under_load_loses_no_request() -> None:
    with run_balancer() as lb:
        async with aiohttp.ClientSession() as s:
            pids = await lb.replica_pids(s)
            now: dict[str, int] = {}

            async def replaced() -> bool:
                # the pool is back at N with a new process under the same name
                now.clear()
                now.update(await lb.replica_pids(s))
                return len(now) == 3 and now.get("Server 2", pids["Server 2"]) != pids["Server 2"]

            drill = await kill_under_load(
                lb.url,
                kill=lambda: os.kill(pids["Server 2"], signal.SIGKILL),
                replaced=replaced,
                requests=3000,
                concurrency=16,
                replace_timeout=10,
            )
            async with s.get(lb.url + "/lbproxy/events") as r:
                events = (await r.json())["message"]
        result = drill.result
        assert result.completed == 3000 and result.errors == {}, result.errors
        assert drill.replaced_after is not None, f"no replacement in the pool: {now}"
        assert set(now) == {"Server 1", "Server 2", "Server 3"}
        served = [
            e
            for e in events
            if e["replica"] == "Server 2" and e["kind"] == "up" and e["time"] >= drill.killed_at
        ]
        assert served, "no replacement came up"


def test_replicas_do_not_outlive_a_sigkilled_balancer() -> None:
    async def pids_of(url: str) -> dict[str, int]:
        async with aiohttp.ClientSession() as s, s.get(url + "/lbproxy/status") as r:
            reps = (await r.json())["message"]["replicas"]
            return {x["name"]: int(x["backend_id"]) for x in reps}

    with run_balancer() as lb:
        pids = asyncio.run(pids_of(lb.url))
        lb.proc.kill()
        lb.proc.wait()
        deadline = time.monotonic() + 5
        while any(pid_alive(p) for p in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(pid_alive(p) for p in pids.values()), "replicas outlived the balancer"
