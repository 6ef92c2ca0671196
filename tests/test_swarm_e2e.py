"""End to end on a real Docker Swarm: `docker stack deploy -c stack.yaml`, two balancers.

Runs whenever `docker info` answers. On an engine that is not in a swarm, the module
initialises a single-node swarm (``--advertise-addr 127.0.0.1``) and leaves it afterwards; on
an engine already in a swarm it touches only the stack, services, configs and network it
made (all named after ``STACK``). Run it under ``flock /tmp/lbproxy-heavy.lock``: a swarm init
changes the engine for everyone. Traffic goes only to 127.0.0.1 (host-mode published ports).

The figures it measures (kill-to-first-response, cross-instance visibility, a balancer's
restart) are printed, not asserted against a number: see docs/swarm.md for the record.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lbproxy_tools.launcher import docker_engine_answers, free_loopback_port
from lbproxy_tools.loadtest import LoadResult, Meter, make_ids, run_load
from tests.conftest import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
STACK = "lbpswarm"
NAMESPACE = "com.docker.stack.namespace"
SOCKET = "/var/run/docker.sock"

if not docker_engine_answers():
    pytest.skip("no Docker engine answers `docker info`", allow_module_level=True)


def sh(*cmd: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout


def _ids(kind: str) -> list[str]:
    """IDs of this stack's objects of ``kind`` (service, config, network, container)."""
    if kind == "container":
        return sh("docker", "ps", "-aq", "--filter", f"label={NAMESPACE}={STACK}").split()
    return sh("docker", kind, "ls", "-q", "--filter", f"label={NAMESPACE}={STACK}").split()


def _leftovers() -> dict[str, list[str]]:
    kinds = ("service", "config", "secret", "network", "container")
    found = {kind: _ids(kind) for kind in kinds}
    return {kind: ids for kind, ids in found.items() if ids}


def _remove_everything() -> None:
    """Force-remove whatever this module made (a failed run's remains), then wait."""
    sh("docker", "stack", "rm", STACK, check=False)
    for kind in ("service", "config", "secret"):
        ids = _ids(kind)
        if ids:
            sh("docker", kind, "rm", *ids, check=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        networks = _ids("network")
        if networks:
            sh("docker", "network", "rm", *networks, check=False)
        if not _leftovers():
            return
        time.sleep(0.5)


@pytest.fixture(scope="module")
def swarm() -> Iterator[None]:
    """A swarm to deploy on: this engine's, or a single-node one made here and left after."""
    state = sh("docker", "info", "--format", "{{.Swarm.LocalNodeState}}").strip()
    made = state != "active"
    # `swarm init` also creates the bridge docker_gwbridge, and `swarm leave` keeps it: a
    # test that made the swarm removes it too, unless it was there before.
    had_gwbridge = _network_exists(GWBRIDGE)
    if made:
        sh("docker", "swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        yield
    finally:
        _remove_everything()
        if made:
            sh("docker", "swarm", "leave", "--force", check=False)
            if not had_gwbridge and _network_exists(GWBRIDGE):
                sh("docker", "network", "rm", GWBRIDGE, check=False)


GWBRIDGE = "docker_gwbridge"


def _network_exists(name: str) -> bool:
    names = sh("docker", "network", "ls", "--format", "{{.Name}}").split()
    return name in names


async def _engine(
    session: aiohttp.ClientSession, method: str, path: str, body: Any = None, **params: str
) -> Any:
    """One Engine API call over the socket (the test's own, not the balancer's)."""
    async with session.request(
        method, f"http://docker/v1.41{path}", json=body, params=params or None
    ) as resp:
        text = await resp.text()
        assert resp.status < 300, f"{method} {path}: {resp.status} {text}"
        return json.loads(text) if text else None


@dataclass
class Deployed:
    a: str  # the stack's balancer
    b: str  # a second balancer service from the stack's own spec (another node's stand-in)
    a_port: int
    b_port: int
    #: the bearer header for /add and /rm: the stack's Docker secret
    admin: dict[str, str]


async def _wait_rep(session: aiohttp.ClientSession, url: str, n: int, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            async with session.get(url + "/rep", timeout=aiohttp.ClientTimeout(total=2)) as r:
                last = await r.json()
                if r.status == 200 and last["message"]["N"] == n:
                    return last
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url} did not report {n} replicas in {timeout}s (last: {last})")


def _services() -> dict[str, str]:
    """name -> ID of this stack's replica services."""
    out = sh(
        "docker", "service", "ls", "--filter", "label=lbproxy.role=replica",
        "--filter", f"label={NAMESPACE}={STACK}", "--format", "{{.Name}} {{.ID}}",
    )  # fmt: skip
    return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())


def _task_container(service: str) -> str:
    out = sh("docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}")
    ids = out.split()
    assert len(ids) == 1, f"expected one running container for {service}, got {ids}"
    return ids[0]


def _make_secret() -> tuple[str, str]:
    """The stack's admin token as a Docker secret (labelled: `stack rm` removes it)."""
    token = secrets.token_urlsafe(24)
    secret = f"{STACK}_admin_token"
    subprocess.run(
        ["docker", "secret", "create", "--label", f"{NAMESPACE}={STACK}", secret, "-"],
        input=token, text=True, capture_output=True, check=True,
    )  # fmt: skip
    return secret, token


async def _deploy(a_port: int, b_port: int, secret: str, token: str) -> Deployed:
    env = dict(os.environ)
    env.update(
        LBPROXY_ADMIN_SECRET=secret,
        LBPROXY_HOST_PORT=str(a_port),
        LBPROXY_POOL=STACK,
        LBPROXY_SWARM_NETWORK=f"{STACK}-net",
        LBPROXY_HEARTBEAT_INTERVAL="0.5",
        LBPROXY_REPLICAS="3",
    )
    sh("docker", "stack", "deploy", "-c", "stack.yaml", STACK, env=env)
    deployed = Deployed(
        a=f"{STACK}_lb",
        b=f"{STACK}_lb2",
        a_port=a_port,
        b_port=b_port,
        admin={"Authorization": f"Bearer {token}"},
    )
    connector = aiohttp.UnixConnector(path=SOCKET)
    async with (
        aiohttp.ClientSession(connector=connector) as engine,
        aiohttp.ClientSession() as s,
    ):
        await _wait_rep(s, _url(a_port), 3, timeout=120)
        # Another node's balancer, made from the stack's own service spec: same image,
        # environment, mounts, network and stack label; another host port.
        spec = (await _engine(engine, "GET", f"/services/{deployed.a}"))["Spec"]
        spec["Name"] = deployed.b
        spec["EndpointSpec"]["Ports"][0]["PublishedPort"] = b_port
        await _engine(engine, "POST", "/services/create", spec)
        await _wait_rep(s, _url(b_port), 3, timeout=120)
    return deployed


@pytest.fixture(scope="module")
def deployed(swarm: None, images: None) -> Iterator[Deployed]:
    _remove_everything()
    a_port, b_port = free_loopback_port(), free_loopback_port()
    try:
        yield asyncio.run(_deploy(a_port, b_port, *_make_secret()))
    finally:
        for service in (f"{STACK}_lb", f"{STACK}_lb2"):
            print(sh("docker", "service", "logs", "--tail", "40", service, check=False))


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


async def _route(session: aiohttp.ClientSession, url: str, ids: list[int]) -> list[str]:
    """The replica that answers each id (X-Request-ID), 16 requests at a time."""
    answers: list[str] = [""] * len(ids)
    queue = iter(enumerate(ids))

    async def worker() -> None:
        for i, rid in queue:
            async with session.get(url + "/home", headers={"X-Request-ID": str(rid)}) as r:
                assert r.status == 200, await r.text()
                answers[i] = (await r.json())["message"].removeprefix("Hello from Server: ")

    await asyncio.gather(*(worker() for _ in range(16)))
    return answers


async def _load_until(
    stop: asyncio.Event, url: str, *, concurrency: int, meter: Meter | None = None
) -> LoadResult:
    """Steady GET /home with random ids (the one load engine) until ``stop`` is set;
    ``meter`` counts answers as they come (wait on it, not on the clock)."""
    return await run_load(
        url,
        requests=10**6,
        concurrency=concurrency,
        ids=make_ids("random", 1000, 7),
        stop=stop,
        meter=meter,
    )


def _answered(meter: Meter) -> int:
    """Requests answered with a 2xx so far (``done`` also counts the failed)."""
    return meter.done - meter.failed


async def test_two_balancers_hold_the_same_pool_and_route_identically(deployed: Deployed) -> None:
    before = _services()
    async with aiohttp.ClientSession() as s:
        rep_a = await _wait_rep(s, _url(deployed.a_port), 3, timeout=10)
        rep_b = await _wait_rep(s, _url(deployed.b_port), 3, timeout=10)
        assert rep_a == rep_b
        names = sorted(n.removeprefix(f"{STACK}_") for n in before)
        assert sorted(rep_a["message"]["replicas"]) == names
        ids = random.Random(15).sample(range(100000, 1000000), 10_000)
        via_a = await _route(s, _url(deployed.a_port), ids)
        via_b = await _route(s, _url(deployed.b_port), ids)
    mismatches = sum(1 for x, y in zip(via_a, via_b, strict=True) if x != y)
    print(f"\nidentical routing: {len(ids)} ids through each balancer, {mismatches} mismatches")
    assert mismatches == 0
    assert set(via_a) == set(rep_a["message"]["replicas"])
    assert _services() == before, "the second balancer must adopt, not create"


async def test_only_the_socket_proxy_holds_the_socket(deployed: Deployed) -> None:
    """The balancers mount no Docker socket; through the proxy, forbidden calls get 403."""
    mounts = {
        name: json.loads(sh("docker", "service", "inspect", "--format",
                            "{{json .Spec.TaskTemplate.ContainerSpec.Mounts}}", name))
        for name in (deployed.a, deployed.b, f"{STACK}_socket-proxy")
    }  # fmt: skip
    assert mounts[deployed.a] is None and mounts[deployed.b] is None, mounts
    assert [m["Source"] for m in mounts[f"{STACK}_socket-proxy"]] == [SOCKET]
    proxy = _task_container(f"{STACK}_socket-proxy")
    probe = (ROOT / "socket-proxy" / "probe.py").read_text()
    answers = json.loads(
        sh("docker", "exec", _task_container(deployed.a), "python", "-c", probe, proxy)
    )
    print(f"\nthrough the socket proxy: {answers}")
    assert answers.pop("list containers") == 200
    assert set(answers.values()) == {403}, answers
    assert _services(), "the replicas are untouched"


async def test_add_and_rm_through_one_balancer_are_seen_by_the_other(deployed: Deployed) -> None:
    a, b = _url(deployed.a_port), _url(deployed.b_port)
    async with aiohttp.ClientSession() as s:
        # the public port is on every address: without the secret's token, /add is refused
        async with s.post(a + "/add", json={"n": 1}) as r:
            assert r.status == 401, await r.text()
    async with aiohttp.ClientSession(headers=deployed.admin) as s:
        async with s.post(a + "/add", json={"n": 2, "hostnames": ["S5"]}) as r:
            assert r.status == 200, await r.text()
            added = (await r.json())["message"]["replicas"]
        assert len(added) == 5 and "S5" in added
        # timed from the moment each call answered
        seen_add = await _until(s, b, lambda names: sorted(names) == sorted(added))
        async with s.delete(b + "/rm", json={"n": 2, "hostnames": ["S5"]}) as r:
            assert r.status == 200, await r.text()
            left = (await r.json())["message"]["replicas"]
        assert len(left) == 3 and "S5" not in left
        seen_rm = await _until(s, a, lambda names: sorted(names) == sorted(left))
    print(f"\ncross-instance visibility: /add via A seen by B after {seen_add:.2f}s, "
          f"/rm via B seen by A after {seen_rm:.2f}s")  # fmt: skip
    assert seen_add <= 2.0 and seen_rm <= 2.0
    assert sorted(n.removeprefix(f"{STACK}_") for n in _services()) == sorted(left)


async def _weights(session: aiohttp.ClientSession, url: str) -> dict[str, tuple[int, str]]:
    """name -> (weight, task ID) as balancer ``url`` holds them."""
    async with session.get(url + "/lbproxy/status") as r:
        reps = (await r.json())["message"]["replicas"]
    return {x["name"]: (x["weight"], x["backend_id"]) for x in reps}


async def _shares(session: aiohttp.ClientSession, url: str) -> Any:
    """The key-space shares of the ring balancer ``url`` routes with."""
    async with session.get(url + "/lbproxy/status") as r:
        return (await r.json())["message"]["shares"]


async def test_weights_are_service_labels_every_balancer_follows(deployed: Deployed) -> None:
    """/add's weight through A and PUT /lbproxy/weight through B reach both; no restart."""
    a, b = _url(deployed.a_port), _url(deployed.b_port)
    async with aiohttp.ClientSession(headers=deployed.admin) as s:
        async with s.post(a + "/add", json={"n": 1, "hostnames": ["w1"], "weight": 3}) as r:
            assert r.status == 200, await r.text()
        started = time.monotonic()
        while (await _weights(s, b)).get("w1", (0, ""))[0] != 3:
            assert time.monotonic() - started < 5, await _weights(s, b)
            await asyncio.sleep(0.05)
        label = sh("docker", "service", "inspect", "--format",
                   '{{index .Spec.Labels "lbproxy.weight"}}', f"{STACK}_w1").strip()  # fmt: skip
        assert label == "3"
        task = (await _weights(s, a))["w1"][1]
        target = sorted(await _weights(s, a))[0]  # an original replica, for the restart test
        for name, weight in (("w1", 5), (target, 2)):
            async with s.put(b + "/lbproxy/weight", json={"hostname": name, "weight": weight}) as r:
                assert r.status == 200, await r.text()
        started = time.monotonic()
        while True:
            on_a = await _weights(s, a)
            if on_a["w1"][0] == 5 and on_a[target][0] == 2:
                break
            assert time.monotonic() - started < 5, on_a
            await asyncio.sleep(0.05)
        seen = time.monotonic() - started
        assert on_a == await _weights(s, b)
        # the weight is on A's member at once; its ring is built off the loop: route once
        # both rings in use are the same (their key-space shares are equal)
        started = time.monotonic()
        while (shares_a := await _shares(s, a)) != await _shares(s, b):
            assert time.monotonic() - started < 10, shares_a
            await asyncio.sleep(0.05)
        settled = time.monotonic() - started
        assert on_a["w1"][1] == task, "a weight change must not replace the task"
        ids = random.Random(16).sample(range(100000, 1000000), 2000)
        via_a, via_b = await _route(s, a, ids), await _route(s, b, ids)
        mismatches = sum(1 for x, y in zip(via_a, via_b, strict=True) if x != y)
        shares = {n: via_a.count(n) for n in sorted(set(via_a))}
        print(f"\nweights: PUT via B seen by A after {seen:.2f}s, its ring in use "
              f"{settled:.2f}s later; 2,000 ids, {mismatches} mismatches; "
              f"requests per replica through A {shares}")  # fmt: skip
        assert mismatches == 0
        assert shares["w1"] > shares[sorted(n for n in shares if n not in ("w1", target))[0]]
        async with s.delete(a + "/rm", json={"n": 1, "hostnames": ["w1"]}) as r:
            assert r.status == 200, await r.text()
        await _wait_rep(s, b, 3, timeout=10)


async def _until(session: aiohttp.ClientSession, url: str, ok: Any) -> float:
    """Seconds until ``ok(replicas)`` holds for ``url``'s /rep (polled every 20 ms)."""
    start = time.monotonic()
    while time.monotonic() - start < 10:
        async with session.get(url + "/rep") as r:
            if ok((await r.json())["message"]["replicas"]):
                return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url} did not converge within 10 s")


def _task_times(service: str, since: float) -> list[tuple[str, float]]:
    """The engine's view: when the service's newest task was created and started running."""
    from lbproxy.backends.swarm import _parse_time

    task = sh("docker", "service", "ps", "-q", "--no-trunc", service).split()[0]
    created, state_at = sh(
        "docker", "inspect", "--format", "{{json .CreatedAt}} {{json .Status.Timestamp}}", task
    ).replace('"', "").split()  # fmt: skip
    return [
        ("swarm:task_created", round(_parse_time(created) - since, 2)),
        ("swarm:task_state", round(_parse_time(state_at) - since, 2)),
    ]


async def test_docker_kill_of_a_replica_under_load(deployed: Deployed) -> None:
    """Swarm replaces it under the same name and ring id; no client request fails."""
    a = _url(deployed.a_port)
    times: list[float] = []
    timeline: list[list[tuple[str, float]]] = []
    async with aiohttp.ClientSession() as s:
        async with s.get(a + "/lbproxy/status") as r:
            replicas = {x["name"]: x for x in (await r.json())["message"]["replicas"]}
        victim = sorted(replicas)[1]
        ring_id = replicas[victim]["ring_id"]
        # an id the victim owns: its first answer after the kill is the new task's
        ids = random.Random(7).sample(range(100000, 1000000), 400)
        owners = await _route(s, a, ids)
        key = next(i for i, o in zip(ids, owners, strict=True) if o == victim)
        stop = asyncio.Event()
        load = asyncio.create_task(_load_until(stop, a, concurrency=8))
        try:
            for _ in range(5):
                container = _task_container(f"{STACK}_{victim}")
                async with s.get(a + "/lbproxy/events") as r:
                    seq = max((e["seq"] for e in (await r.json())["message"]), default=0)
                killed, killed_wall = time.monotonic(), time.time()
                sh("docker", "kill", container)
                while True:
                    async with s.get(a + "/home", headers={"X-Request-ID": str(key)}) as r:
                        assert r.status == 200
                        who = (await r.json())["message"].removeprefix("Hello from Server: ")
                    if who == victim:
                        times.append(time.monotonic() - killed)
                        break
                    assert time.monotonic() - killed < 30, "no replacement within 30 s"
                    await asyncio.sleep(0.01)
                # where the time went: the balancer's view of the victim, from the kill on
                async with s.get(a + "/lbproxy/events", params={"since": str(seq)}) as r:
                    timeline.append(
                        [
                            (e["kind"], round(e["time"] - killed_wall, 2))
                            for e in (await r.json())["message"]
                            if e["replica"] == victim
                        ]
                        + _task_times(f"{STACK}_{victim}", killed_wall)
                    )
                assert _task_container(f"{STACK}_{victim}") != container
        finally:
            stop.set()
            result = await load
        async with s.get(a + "/lbproxy/status") as r:
            after = {x["name"]: x for x in (await r.json())["message"]["replicas"]}
    print(f"\ndocker kill -> first response from the replacement: "
          f"median {statistics.median(times):.2f}s of {[round(t, 2) for t in times]}; "
          f"load {result.completed} requests, errors {result.errors}")  # fmt: skip
    for events in timeline:
        print("  balancer's events (s after the kill):", events)
    assert after[victim]["ring_id"] == ring_id
    assert sorted(after) == sorted(replicas)
    assert result.completed > 0 and result.errors == {}, result.errors


def _force_update_counter(service: str) -> int:
    out = sh("docker", "service", "inspect", "--format", "{{json .Spec.TaskTemplate}}", service)
    return int(json.loads(out).get("ForceUpdate", 0))


async def test_a_hung_replica_is_replaced_once_whatever_the_balancers(deployed: Deployed) -> None:
    """`docker pause`: the task runs but answers nothing. Swarm sees nothing wrong; both
    balancers' heartbeats do, and each asks Swarm to replace it with a version-checked forced
    update: the counter goes up by exactly one and one new task serves under the same name."""
    a = _url(deployed.a_port)
    async with aiohttp.ClientSession() as s:
        async with s.get(a + "/lbproxy/status") as r:
            replicas = {x["name"]: x for x in (await r.json())["message"]["replicas"]}
        victim = sorted(replicas)[2]
        service = f"{STACK}_{victim}"
        forced = _force_update_counter(service)
        container = _task_container(service)
        paused = time.monotonic()
        sh("docker", "pause", container)
        try:
            while True:
                async with s.get(a + "/lbproxy/status") as r:
                    now = {x["name"]: x for x in (await r.json())["message"]["replicas"]}
                if (
                    now[victim]["state"] == "up"
                    and now[victim]["backend_id"] != replicas[victim]["backend_id"]
                ):
                    break
                assert time.monotonic() - paused < 60, f"not replaced within 60 s: {now[victim]}"
                await asyncio.sleep(0.1)
            replaced = time.monotonic() - paused
        finally:
            sh("docker", "unpause", container, check=False)
        # both balancers saw the hang (heartbeats every 0.5 s, fall 2) and each tried to
        # force an update right then; once B too routes to the new task, both attempts are over
        b = _url(deployed.b_port)
        while True:
            async with s.get(b + "/lbproxy/status") as r:
                on_b = {x["name"]: x for x in (await r.json())["message"]["replicas"]}
            if (
                on_b[victim]["state"] == "up"
                and on_b[victim]["backend_id"] == now[victim]["backend_id"]
            ):
                break
            assert time.monotonic() - paused < 90, f"B did not follow: {on_b[victim]}"
            await asyncio.sleep(0.1)
    print(f"\nhung replica: back on the ring under a new task after {replaced:.2f}s")
    assert _force_update_counter(service) == forced + 1
    assert now[victim]["ring_id"] == replicas[victim]["ring_id"]


async def test_killed_balancer_is_restarted_and_adopts(deployed: Deployed) -> None:
    """Kill A's container under load on both: B serves throughout; A comes back, creates nothing."""
    a, b = _url(deployed.a_port), _url(deployed.b_port)
    before = _services()
    async with aiohttp.ClientSession() as s:
        weights = {n: w for n, (w, _) in (await _weights(s, b)).items()}
        stop = asyncio.Event()
        meter_a, meter_b = Meter(), Meter()
        load_b = asyncio.create_task(_load_until(stop, b, concurrency=4, meter=meter_b))
        load_a = asyncio.create_task(_load_until(stop, a, concurrency=4, meter=meter_a))
        try:
            # both loads flow before the kill
            await wait_for(lambda: _answered(meter_a) >= 50 and _answered(meter_b) >= 50, 30)
            container = _task_container(deployed.a)
            killed = time.monotonic()
            sh("docker", "kill", container)
            await _wait_rep(s, a, 3, timeout=60)
            restarted = time.monotonic() - killed
            # B's clients are still served after A's restart, and A's are served again
            a_back, b_back = _answered(meter_a), _answered(meter_b)
            await wait_for(
                lambda: _answered(meter_a) >= a_back + 50 and _answered(meter_b) >= b_back + 50,
                30,
            )
        finally:
            stop.set()
            seen_b, seen_a = (await load_b).errors, (await load_a).errors
    print(f"\nbalancer killed: back after {restarted:.2f}s; the other balancer's clients saw "
          f"{seen_b}; the killed one's clients saw {seen_a}")  # fmt: skip
    assert seen_b == {}, seen_b
    assert _task_container(deployed.a) != container
    assert _services() == before, "a restarted balancer must adopt, not create or remove"
    async with aiohttp.ClientSession() as s:  # the weights came back with the labels
        assert {n: w for n, (w, _) in (await _weights(s, a)).items()} == weights


async def test_stack_rm_leaves_nothing(deployed: Deployed) -> None:
    sh("docker", "service", "rm", deployed.b)
    sh("docker", "stack", "rm", STACK)
    deadline = time.monotonic() + 60
    left = _leftovers()
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        left = _leftovers()
    assert not left, f"docker stack rm left {left}"
