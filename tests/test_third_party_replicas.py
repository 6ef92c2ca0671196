"""Replicas nobody here wrote, behind the balancer (issue 11): Python's own
``http.server`` as a process replica, and the stock ``python:3.11-slim`` image as a Docker
replica. For both: the same key value reaches the same replica while the pool is
unchanged, a replica killed with SIGKILL under load costs no request but a response it had
begun (cut, never passed off as complete, and counted by the balancer), and the pool
returns to N.

The replicas cannot say who they are (http.server's answers are identical), so the
replica that served a request is read from the balancer's own per-replica ``served``
counters, one request at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from lbproxy_tools.launcher import clean_env, docker_engine_answers, free_loopback_port, wait_http
from lbproxy_tools.loadtest import Meter, make_ids, run_load
from tests.conftest import wait_for

PY = shlex.quote(sys.executable)
N = 3


@contextlib.contextmanager
def balancer(*flags: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``lbproxy serve`` with ``flags`` on a free loopback port; stopped (SIGTERM) on exit."""
    port = free_loopback_port()
    cmd = [
        sys.executable, "-m", "lbproxy", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--replicas", str(N), "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1",
        "--key", "query:id", "--log-level", "warning", *flags,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=clean_env())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/rep", timeout=60)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def replicas(s: aiohttp.ClientSession, url: str) -> list[dict[str, object]]:
    async with s.get(url + "/lbproxy/status") as r:
        reps: list[dict[str, object]] = (await r.json())["message"]["replicas"]
        return reps


async def served_by(s: aiohttp.ClientSession, url: str, key: str) -> str:
    """The replica that answered ``GET /?id=key`` (its served counter moved by one)."""
    before = {str(r["name"]): r["served"] for r in await replicas(s, url)}
    async with s.get(url + "/", params={"id": key}) as r:
        assert r.status == 200
        assert r.headers["Server"].startswith("SimpleHTTP/")  # the stranger answered
        await r.read()
    after = {str(r["name"]): r["served"] for r in await replicas(s, url)}
    moved = [name for name in after if after[name] != before.get(name)]
    assert len(moved) == 1, (before, after)
    return moved[0]


async def check_routing_is_stable(s: aiohttp.ClientSession, url: str) -> None:
    owners = set()
    for i in range(12):
        key = f"user-{i * 7919}"
        seen = {await served_by(s, url, key) for _ in range(3)}
        assert len(seen) == 1, f"key {key} went to {seen}"
        owners |= seen
    assert len(owners) > 1, "12 keys all went to one replica: the key was ignored"


async def check_passes_404_through(s: aiohttp.ClientSession, url: str) -> None:
    async with s.get(url + "/no-such-file") as r:
        assert r.status == 404  # --rewrite-404 is off for a service that is not server_app
        assert "endpoint does not exist" not in await r.text()


async def kill_under_load(
    s: aiohttp.ClientSession, url: str, kill: object, requests: int = 1500
) -> None:
    """SIGKILL one replica mid-load: every request succeeds but for responses the replica
    had begun (cut, and counted by the balancer as truncated), and the pool returns to N."""
    before = {str(r["name"]): r["backend_id"] for r in await replicas(s, url)}
    victim = sorted(before)[1]
    meter = Meter()
    ids = make_ids("random", requests, 7)
    load = asyncio.create_task(
        run_load(url, requests=requests, concurrency=8, ids=ids, path="/", meter=meter)
    )
    await wait_for(lambda: meter.done >= 100, timeout=30)  # the load flows
    kill(before[victim])  # type: ignore[operator]
    deadline = time.monotonic() + 60
    while True:
        now = await replicas(s, url)
        up = {str(r["name"]): r["backend_id"] for r in now if r["state"] == "up"}
        if len(up) == N and up.get(victim) not in (None, before[victim]):
            break
        assert time.monotonic() < deadline, f"pool did not return to {N}: {now}"
        await asyncio.sleep(0.1)
    result = await load
    assert result.completed == requests
    # A stranger may write a response's head and its body in two writes (http.server does):
    # a kill between them cuts a response already begun, which no proxy can retry (nginx's
    # proxy_next_upstream and HAProxy's retry-on act only while nothing was sent). The
    # balancer must then cut the client's response too, never end it as complete (RFC 9112
    # section 8), and count it: every client-side failure is one it counted as truncated.
    truncated = await upstream_errors(s, url, "truncated")
    assert set(result.errors) <= {"ClientPayloadError"}, result.errors
    assert sum(result.errors.values()) <= truncated, (result.errors, truncated)
    assert sorted(up) == sorted(before)


async def upstream_errors(s: aiohttp.ClientSession, url: str, kind: str) -> int:
    """The balancer's ``lbproxy_upstream_errors`` counter of ``kind``."""
    async with s.get(url + "/lbproxy/metrics") as r:
        text = await r.text()
    prefix = f'lbproxy_upstream_errors_total{{kind="{kind}"}} '
    return sum(
        int(float(line[len(prefix) :])) for line in text.splitlines() if line.startswith(prefix)
    )


# -- (a) the process backend running python3 -m http.server -------------------------------


@pytest.mark.process
@pytest.mark.slow
async def test_python_http_server_as_process_replicas() -> None:
    template = f"{PY} -m http.server {{port}} --bind 127.0.0.1"
    with balancer("--replica-cmd", template, "--health-path", "/") as (_, url):
        async with aiohttp.ClientSession() as s:
            await check_routing_is_stable(s, url)
            await check_passes_404_through(s, url)
            # kill -9 the replica: its whole process group, as a crash would.
            await kill_under_load(s, url, lambda pid: os.killpg(int(pid), signal.SIGKILL))
            await check_routing_is_stable(s, url)


# -- (b) the Docker backend running the stock python:3.11-slim image ----------------------

IMAGE = "python:3.11-slim"


def _docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    if check and done.returncode:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout if done.returncode == 0 else ""


@pytest.mark.docker
@pytest.mark.slow
async def test_stock_python_image_as_docker_replicas() -> None:
    if not docker_engine_answers():
        pytest.skip("no Docker engine answers")
    if not _docker("image", "inspect", IMAGE, check=False):
        # The engine answers, so this must run: fail, never skip (ensure-images provides it).
        pytest.fail(f"{IMAGE} is not on this engine: bash scripts/ensure-images.sh provides it")
    run = uuid.uuid4().hex[:8]
    pool, network = f"lbproxy-3p-{run}", f"lbproxy-3p-net-{run}"
    flags = [
        "--backend", "docker", "--docker-image", IMAGE, "--replica-port", "8000",
        "--replica-cmd", "python -m http.server 8000", "--health-path", "/",
        "--replica-env", "PYTHONUNBUFFERED=1", "--docker-memory", "96", "--docker-cpus", "0.5",
        "--pool", pool, "--docker-network", network,
    ]  # fmt: skip
    try:
        with balancer(*flags) as (_, url):
            async with aiohttp.ClientSession() as s:
                reps = await replicas(s, url)
                info = _docker("inspect", str(reps[0]["backend_id"]))
                assert '"python",' in info and '"http.server",' in info and IMAGE in info
                assert "PYTHONUNBUFFERED=1" in info and "LBPROXY_RING_ID=" in info
                assert '"Memory": 100663296' in info
                await check_routing_is_stable(s, url)
                await check_passes_404_through(s, url)
                await kill_under_load(
                    s, url, lambda cid: _docker("kill", "--signal", "KILL", str(cid))
                )
                await check_routing_is_stable(s, url)
    finally:
        # Whatever happened above, leave no container or network of this run behind.
        left = _docker("ps", "-aq", "--filter", f"label=lbproxy.control.pool={pool}").split()
        if left:
            _docker("rm", "-f", *left, check=False)
        _docker("network", "rm", network, check=False)
    assert not left, f"the balancer left containers behind: {left}"
