"""End to end on the real Docker engine: Compose, the balancer container, real replicas.

Runs whenever `docker info` answers, and fails (never skips) when the engine is there but
the images cannot be built or the stack cannot start. Traffic goes only to 127.0.0.1 (the
balancer's published port); only the balancer talks to the replica containers, over the
project's own network. Every test cleans up what it created, even when it fails.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from lbproxy_tools.launcher import ComposeStack, compose_stack, docker_engine_answers
from tests.kill_under_load import kill_under_load

# The first test's setup builds the images when they are stale: minutes on a busy machine.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "lbproxy-e2e"


if not docker_engine_answers():
    pytest.skip("no Docker engine answers `docker info`", allow_module_level=True)


def sh(*cmd: str, check: bool = True) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout


def _wait_rep(stack: ComposeStack, n: int, timeout: float = 60.0) -> dict[str, object]:
    import urllib.request

    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(stack.url + "/rep", timeout=2) as resp:
                body = json.loads(resp.read())
                last = body
                if body["message"]["N"] == n and len(stack.replicas()) == n:
                    return body  # type: ignore[no-any-return]
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"the balancer did not report {n} replicas in {timeout}s (last: {last})")


@pytest.fixture
def stack(images: None) -> Iterator[ComposeStack]:
    with compose_stack(
        str(ROOT), project=PROJECT, extra_env={"LBPROXY_HEARTBEAT_INTERVAL": "0.5"}
    ) as s:
        try:
            _wait_rep(s, 3)
            yield s
        finally:
            print(s.run("logs", "--no-color", "--tail", "60", "lb", check=False))
    leftovers = s.replicas(all_states=True)
    networks = sh("docker", "network", "ls", "-q", "--filter", f"name=^{s.network}$").split()
    project = sh("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}")
    s.remove_leftovers()
    assert not leftovers, f"compose down left replica containers behind: {leftovers}"
    assert not networks, f"compose down left network {s.network} behind"
    assert not project.split(), "compose down left project containers behind"


async def _rep(session: aiohttp.ClientSession, url: str) -> dict[str, object]:
    async with session.get(url + "/rep") as resp:
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]


async def test_compose_up_serves_from_real_containers(stack: ComposeStack) -> None:
    async with aiohttp.ClientSession() as s:
        body = await _rep(s, stack.url)
        names = body["message"]["replicas"]  # type: ignore[index]
        assert sorted(names) == sorted(stack.replicas())
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
    info = json.loads(sh("docker", "inspect", next(iter(stack.replicas().values()))))[0]
    assert info["Config"]["Labels"]["lbproxy.role"] == "replica"
    assert list(info["NetworkSettings"]["Networks"]) == [stack.network]
    assert info["HostConfig"]["Memory"] > 0
    assert not info["HostConfig"]["Privileged"]
    lb_info = json.loads(sh("docker", "inspect", stack.lb_container()))[0]
    assert not lb_info["HostConfig"]["Privileged"]


async def test_docker_kill_under_load_is_replaced_without_failures(stack: ComposeStack) -> None:
    async with aiohttp.ClientSession() as s:
        before = stack.replicas()
        victim = sorted(before)[1]

        async def replaced() -> bool:
            # the replacement: same hostname, new container, up on the balancer
            now = stack.replicas()
            if now.get(victim) in (None, before[victim]):
                return False
            async with s.get(stack.url + "/lbproxy/status") as r:
                reps = (await r.json())["message"]["replicas"]
            state = next(x for x in reps if x["name"] == victim)
            return bool(state["state"] == "up" and state["backend_id"] == now[victim])

        drill = await kill_under_load(
            stack.url,
            kill=lambda: sh("docker", "kill", before[victim]),
            replaced=replaced,
            requests=4000,
            concurrency=8,
            poll=0.1,
        )
    serving_after, result = drill.replaced_after, drill.result
    assert serving_after is not None, "no replacement came up"
    assert serving_after < 5.0, f"replacement took {serving_after:.1f}s"
    assert result.completed == 4000 and result.errors == {}, result.errors
    assert sorted(stack.replicas()) == sorted(before)


async def test_add_and_rm_create_and_remove_real_containers(stack: ComposeStack) -> None:
    # compose.yaml wires a generated admin token: without it /add is refused
    async with aiohttp.ClientSession() as s:
        async with s.post(stack.url + "/add", json={"n": 1, "hostnames": []}) as r:
            assert r.status == 401, await r.text()
    async with aiohttp.ClientSession(headers=stack.admin_headers()) as s:
        async with s.post(stack.url + "/add", json={"n": 2, "hostnames": ["e2e-s5"]}) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        names = body["message"]["replicas"]
        assert len(names) == 5 and "e2e-s5" in names
        assert sorted(names) == sorted(stack.replicas())
        async with s.delete(stack.url + "/rm", json={"n": 1, "hostnames": ["e2e-s5"]}) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        names = body["message"]["replicas"]
        assert "e2e-s5" not in names and len(names) == 4
        assert sorted((await _rep(s, stack.url))["message"]["replicas"]) == sorted(stack.replicas())  # type: ignore[index]
        # an engine-side failure is a clean JSON error and leaves nothing behind: a
        # stranger's container holds the name the replica's container would get
        stranger = f"{stack.pool}_e2e-stranger"
        sh("docker", "run", "-d", "--name", stranger, "--network", "none",
           "python:3.11-slim", "sleep", "60")  # fmt: skip
        try:
            async with s.post(
                stack.url + "/add", json={"n": 1, "hostnames": ["e2e-stranger"]}
            ) as r:
                assert r.status == 409, await r.text()
                err = await r.json()
            assert err["status"] == "failure" and "e2e-stranger" in err["message"]
        finally:
            sh("docker", "rm", "-f", stranger, check=False)
        assert sorted((await _rep(s, stack.url))["message"]["replicas"]) == sorted(stack.replicas())  # type: ignore[index]


def test_only_the_socket_proxy_holds_the_socket(stack: ComposeStack) -> None:
    """The balancer mounts no Docker socket; through the proxy, forbidden calls get 403."""
    lb_info = json.loads(sh("docker", "inspect", stack.lb_container()))[0]
    assert not any("docker.sock" in m["Source"] for m in lb_info["Mounts"]), lb_info["Mounts"]
    proxy = stack.run("ps", "-q", "socket-proxy").strip()
    proxy_info = json.loads(sh("docker", "inspect", proxy))[0]
    assert [m["Source"] for m in proxy_info["Mounts"]] == ["/var/run/docker.sock"]
    probe = (ROOT / "socket-proxy" / "probe.py").read_text()
    # the proxy's own container is not the pool's: the balancer may not stop it
    answers = json.loads(stack.run("exec", "-T", "lb", "python", "-c", probe, proxy))
    print(f"\nthrough the socket proxy: {answers}")
    assert answers.pop("list containers") == 200
    assert set(answers.values()) == {403}, answers
    assert stack.run("ps", "-q", "socket-proxy").strip() == proxy


async def test_balancer_crash_restart_adopts_the_same_replicas(stack: ComposeStack) -> None:
    before = stack.replicas()
    lb = stack.lb_container()
    sh("docker", "kill", lb)  # a crash: no chance to clean up
    assert stack.replicas() == before, "replicas must survive a balancer crash"
    sh("docker", "start", lb)
    body = _wait_rep(stack, 3)
    assert sorted(body["message"]["replicas"]) == sorted(before)  # type: ignore[index]
    assert stack.replicas() == before, "adoption must reuse the containers, not recreate them"
