"""Start a real ``lbproxy serve`` process on a free loopback port, and stop it for sure.

Used by the end-to-end tests, the recovery benchmark and ``lbproxy analyze``: each needs a
balancer it did not start in-process, so that what it measures is what users run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp

from lbproxy.backends.process import free_loopback_port


@dataclass
class RunningBalancer:
    proc: subprocess.Popen[bytes]
    url: str

    async def status(self, session: aiohttp.ClientSession) -> dict[str, object]:
        async with session.get(self.url + "/lbproxy/status") as resp:
            body: dict[str, object] = (await resp.json())["message"]
            return body

    async def replica_pids(self, session: aiohttp.ClientSession) -> dict[str, int]:
        status = await self.status(session)
        replicas = status["replicas"]
        assert isinstance(replicas, list)
        return {
            r["name"]: int(r["backend_id"])
            for r in replicas
            if r["backend_id"] and r["state"] == "up"
        }


def wait_http(url: str, timeout: float = 20.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s")


@contextlib.contextmanager
def run_balancer(
    *extra: str, replicas: int = 3, port: int | None = None
) -> Iterator[RunningBalancer]:
    """Start ``lbproxy serve`` on a free loopback port; SIGTERM it (then SIGKILL) on exit."""
    port = port or free_loopback_port()
    cmd = [
        sys.executable,
        "-m",
        "lbproxy",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--replicas",
        str(replicas),
        "--backend",
        "process",
        "--heartbeat-interval",
        "0.2",
        "--heartbeat-timeout",
        "0.5",
        "--log-level",
        "warning",
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBPROXY_")}
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/rep")
        yield RunningBalancer(proc, url)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"
    return True
