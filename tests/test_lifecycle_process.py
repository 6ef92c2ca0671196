"""Fault injection with real processes: a cancelled launch and a second SIGTERM.

uvicorn's rule for signals: the first starts a graceful shutdown, a second forces a fast
one, and neither leaves the process half-stopped. Here the fast stop must still stop every
replica the balancer started (with Docker, remove every container).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from lbproxy.backends.base import BackendEvent
from lbproxy.backends.process import ProcessBackend
from lbproxy.config import Config
from lbproxy_tools.launcher import (
    clean_env,
    free_loopback_port,
    pid_alive,
    serve_command,
    wait_http,
)

pytestmark = pytest.mark.process


def _replica_children() -> list[int]:
    """Pids of this process's children that run a replica (server_app)."""
    me = str(os.getpid())
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == me and b"server_app" in cmdline and fields[0] != "Z":
            found.append(int(entry.name))
    return found


async def test_cancelled_process_launch_leaves_no_child() -> None:
    """Cancel a launch after 0, 1, 2, ... loop turns: whatever it spawned is gone when the
    cancellation reaches the caller. (asyncio itself kills a child whose spawn is
    cancelled; this pins that, and the backend's own undo covers the rest of launch.)"""
    backend = ProcessBackend(Config())
    deaths: list[BackendEvent] = []
    await backend.open(deaths.append)
    try:
        assert _replica_children() == []
        outcomes: set[str] = set()
        for turns in range(12):
            task = asyncio.create_task(backend.launch(f"Cancel {turns}", turns + 1))
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            try:
                handle = await task
            except asyncio.CancelledError:
                outcomes.add("cancelled")
            else:  # it finished before the cancel landed: an ordinary launch
                outcomes.add("finished")
                await backend.stop(handle, timeout=1.0)
            assert _replica_children() == [], f"a child survived a cancel after {turns} turns"
            assert await backend.list() == []
        assert "cancelled" in outcomes
    finally:
        await backend.close()


@pytest.mark.slow
async def test_second_sigterm_forces_a_fast_stop_that_still_stops_replicas(
    tmp_path: Path,
) -> None:
    port = free_loopback_port()
    log_path = tmp_path / "balancer.log"
    cmd = serve_command(
        port,
        3,
        "--heartbeat-interval",
        "60",  # nothing notices the frozen replicas: the drain must wait for them
        "--read-timeout",
        "120",
        "--stop-timeout",
        "60",
        "--shutdown-timeout",
        "90",
        "--log-level",
        "info",
    )
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(*cmd, env=clean_env(), stderr=log_file)
    url = f"http://127.0.0.1:{port}"
    pids: list[int] = []
    try:
        await asyncio.to_thread(wait_http, url + "/rep")
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/lbproxy/status") as r:
                replicas = (await r.json())["message"]["replicas"]
            pids = [int(rep["backend_id"]) for rep in replicas]
            assert len(pids) == 3
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)  # frozen: a request to any of them hangs
            hung = asyncio.create_task(
                session.get(url + "/home", timeout=aiohttp.ClientTimeout(total=100))
            )
            while True:  # wait until the balancer holds the request in flight
                async with session.get(url + "/lbproxy/status") as r:
                    replicas = (await r.json())["message"]["replicas"]
                if any(rep["in_flight"] for rep in replicas):
                    break
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            while b"shutting down" not in log_path.read_bytes():
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)  # impatient operator (or Compose) again
            # Bounded wait: the graceful drain alone would take its whole 60 s.
            rc = await asyncio.wait_for(proc.wait(), 30)
            hung.cancel()
        log = log_path.read_text()
        assert rc == 0, log
        assert "forcing a fast stop" in log
        deadline = time.monotonic() + 10  # hang guard for the kernel to reap them
        while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not any(pid_alive(p) for p in pids), "a replica outlived the forced stop"
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
