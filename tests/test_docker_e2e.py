"""End to end on the real Docker engine: Compose, the balancer container, real replicas.

Runs whenever `docker info` answers, and fails (never skips) when the engine is there but
the images cannot be built or the stack cannot start. Traffic goes only to 127.0.0.1 (the
balancer's published port); only the balancer talks to the replica containers, over the
project's own network. Every test cleans up what it created, even when it fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from lbproxy.backends.process import free_loopback_port
from tests.process_balancer import steady_load

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "lbproxy-e2e"
POOL = "lbproxy-e2e"
NETWORK = "lbproxy-e2e-net"


def _engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


if not _engine_answers():
    pytest.skip("no Docker engine answers `docker info`", allow_module_level=True)


def _compose_cmd() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("a Docker engine answers but neither `docker compose` nor `docker-compose` exists")


def sh(*cmd: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout


def pool_containers(*, all_states: bool = False) -> dict[str, str]:
    """name -> id of this pool's replica containers, as the engine lists them."""
    args = ["docker", "ps", "--no-trunc", "--filter", f"label=lbproxy.pool={POOL}"]
    if all_states:
        args.append("-a")
    out = sh(*args, "--format", "{{.Names}} {{.ID}}")
    return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())


def _cleanup_engine() -> None:
    ids = sh("docker", "ps", "-aq", "--filter", f"label=lbproxy.pool={POOL}", check=False).split()
    if ids:
        sh("docker", "rm", "-f", *ids, check=False)
    sh("docker", "network", "rm", NETWORK, check=False)


@pytest.fixture(scope="session")
def images() -> None:
    """Build the base image (if no registry), wheels and both images; fail, never skip."""
    proc = subprocess.run(
        ["bash", "scripts/ensure-images.sh"], cwd=ROOT, capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        pytest.fail(f"building the images failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")


@dataclass
class Stack:
    url: str
    compose: list[str]
    env: dict[str, str]

    def run(self, *args: str, check: bool = True) -> str:
        return sh(*self.compose, *args, env=self.env, check=check)

    def lb_container(self) -> str:
        return self.run("ps", "-q", "lb").strip()


def _wait_rep(url: str, n: int, timeout: float = 60.0) -> dict[str, object]:
    import urllib.request

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/rep", timeout=2) as resp:
                body = json.loads(resp.read())
                last = body
                if body["message"]["N"] == n and len(pool_containers()) == n:
                    return body  # type: ignore[no-any-return]
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"the balancer did not report {n} replicas in {timeout}s (last: {last})")


@pytest.fixture
def stack(images: None) -> Iterator[Stack]:
    compose = [*_compose_cmd(), "-p", PROJECT, "-f", "compose.yaml"]
    port = free_loopback_port()
    env = dict(os.environ)
    env.update(
        LBPROXY_HOST_PORT=str(port),
        LBPROXY_POOL=POOL,
        LBPROXY_NETWORK=NETWORK,
        LBPROXY_REPLICAS="3",
        LBPROXY_PIP_OPTS="--no-index",
        LBPROXY_HEARTBEAT_INTERVAL="0.5",
    )
    _cleanup_engine()
    s = Stack(f"http://127.0.0.1:{port}", compose, env)
    try:
        s.run("up", "-d", "--no-build", "lb")
        _wait_rep(s.url, 3)
        yield s
    finally:
        logs = s.run("logs", "--no-color", "--tail", "60", "lb", check=False)
        s.run("down", "--remove-orphans", "--timeout", "30", check=False)
        leftovers = pool_containers(all_states=True)
        networks = sh("docker", "network", "ls", "-q", "--filter", f"name=^{NETWORK}$").split()
        project = sh(
            "docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"
        )
        _cleanup_engine()
        print(logs)
        assert not leftovers, f"compose down left replica containers behind: {leftovers}"
        assert not networks, f"compose down left network {NETWORK} behind"
        assert not project.split(), "compose down left project containers behind"


async def _rep(session: aiohttp.ClientSession, url: str) -> dict[str, object]:
    async with session.get(url + "/rep") as resp:
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]


async def test_compose_up_serves_from_real_containers(stack: Stack) -> None:
    async with aiohttp.ClientSession() as s:
        body = await _rep(s, stack.url)
        names = body["message"]["replicas"]  # type: ignore[index]
        assert sorted(names) == sorted(pool_containers())
        assert len(names) == 3
        seen = set()
        for i in range(60):
            async with s.get(
                stack.url + "/home", headers={"X-Request-ID": str(100000 + 997 * i)}
            ) as r:
                assert r.status == 200
                seen.add((await r.json())["message"].removeprefix("Hello from Server: "))
        assert seen == set(names)
    # the replicas are labelled, limited and on the project's network only
    info = json.loads(sh("docker", "inspect", next(iter(pool_containers().values()))))[0]
    assert info["Config"]["Labels"]["lbproxy.role"] == "replica"
    assert list(info["NetworkSettings"]["Networks"]) == [NETWORK]
    assert info["HostConfig"]["Memory"] > 0
    assert not info["HostConfig"]["Privileged"]
    lb_info = json.loads(sh("docker", "inspect", stack.lb_container()))[0]
    assert not lb_info["HostConfig"]["Privileged"]


async def test_docker_kill_under_load_is_replaced_without_failures(stack: Stack) -> None:
    async with aiohttp.ClientSession() as s:
        before = pool_containers()
        victim = sorted(before)[1]
        load = asyncio.create_task(steady_load(s, stack.url, requests=4000, concurrency=8))
        await asyncio.sleep(0.5)
        killed = time.monotonic()
        sh("docker", "kill", before[victim])
        # the replacement: same hostname, new container, serving within 5 s
        serving_after = None
        while time.monotonic() - killed < 15:
            now = pool_containers()
            if now.get(victim) not in (None, before[victim]):
                async with s.get(stack.url + "/lbproxy/status") as r:
                    reps = (await r.json())["message"]["replicas"]
                state = next(x for x in reps if x["name"] == victim)
                if state["state"] == "up" and state["backend_id"] == now[victim]:
                    serving_after = time.monotonic() - killed
                    break
            await asyncio.sleep(0.1)
        outcomes = await load
    assert serving_after is not None, "no replacement came up"
    assert serving_after < 5.0, f"replacement took {serving_after:.1f}s"
    assert outcomes == {"200": 4000}, outcomes
    assert sorted(pool_containers()) == sorted(before)


async def test_add_and_rm_create_and_remove_real_containers(stack: Stack) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(stack.url + "/add", json={"n": 2, "hostnames": ["e2e-s5"]}) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        names = body["message"]["replicas"]
        assert len(names) == 5 and "e2e-s5" in names
        assert sorted(names) == sorted(pool_containers())
        async with s.delete(stack.url + "/rm", json={"n": 1, "hostnames": ["e2e-s5"]}) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        names = body["message"]["replicas"]
        assert "e2e-s5" not in names and len(names) == 4
        assert sorted((await _rep(s, stack.url))["message"]["replicas"]) == sorted(
            pool_containers()
        )  # type: ignore[index]
        # an engine-side failure is a clean JSON error and leaves nothing behind
        sh(
            "docker",
            "run",
            "-d",
            "--name",
            "e2e-stranger",
            "--network",
            "none",
            "python:3.11-slim",
            "sleep",
            "60",
        )
        try:
            async with s.post(
                stack.url + "/add", json={"n": 1, "hostnames": ["e2e-stranger"]}
            ) as r:
                assert r.status == 409, await r.text()
                err = await r.json()
            assert err["status"] == "failure" and "e2e-stranger" in err["message"]
        finally:
            sh("docker", "rm", "-f", "e2e-stranger", check=False)
        assert sorted((await _rep(s, stack.url))["message"]["replicas"]) == sorted(
            pool_containers()
        )  # type: ignore[index]


async def test_balancer_crash_restart_adopts_the_same_replicas(stack: Stack) -> None:
    before = pool_containers()
    lb = stack.lb_container()
    sh("docker", "kill", lb)  # a crash: no chance to clean up
    assert pool_containers() == before, "replicas must survive a balancer crash"
    sh("docker", "start", lb)
    body = _wait_rep(stack.url, 3)
    assert sorted(body["message"]["replicas"]) == sorted(before)  # type: ignore[index]
    assert pool_containers() == before, "adoption must reuse the containers, not recreate them"
