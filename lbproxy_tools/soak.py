"""Chaos soak: steady load through the balancer while a random replica is killed every few s.

    python -m lbproxy_tools.soak --backend process --duration 60 --kill-every 5 --concurrency 16
    python -m lbproxy_tools.soak --backend docker  --duration 60 --kill-every 5 --concurrency 16
    (add --seed S to repeat a run's victims and request ids, --json OUT for the figures)

The balancer runs on a free 127.0.0.1 port: ``lbproxy serve --backend process`` through
``lbproxy_tools.launcher.run_balancer``, or the Compose stack (``compose_stack``; images from
``scripts/ensure-images.sh``). ``run_load`` sends GET /home with random 6-digit
X-Request-IDs from ``--concurrency`` connections for ``--duration`` seconds (capped at
``--max-requests``). Every ``--kill-every`` seconds a random replica that is up is killed
without warning: SIGKILL to the pid /lbproxy/status reports (process), or ``docker kill``
of the container ``docker ps --filter label=lbproxy.control.pool=<pool>`` lists (docker). No kill
falls in the last ``--kill-every`` seconds, so the last victim recovers under load; after
``--duration`` the load goes on until the pool is whole again (at most ``--settle`` s).

Reported: requests sent and failed (by kind: the goal is 0), the replacements observed in
/lbproxy/events (an ``up`` after a ``died`` or ``heartbeat_down`` of the same name), each
kill's detection and recovery (kill -> replacement ``up``, in ms of the host's wall clock,
which the balancer's event times share), the slowest recovery, and whether the pool is back
at N with the same names, all up, on the ring and running. Everything started is stopped
(replica processes, containers, the network) and checked to be gone. Exit status 0 only
when nothing failed, every kill recovered, the pool is whole and nothing leaked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from lbproxy_tools.launcher import ComposeStack, compose_stack, pid_alive, run_balancer
from lbproxy_tools.loadtest import LoadResult, make_ids, run_load

ROOT = Path(__file__).resolve().parent.parent

DETECTED = ("died", "heartbeat_down")
#: How often the soak reads the balancer's events (well inside the log's 2000-event bound).
POLL = 0.25


# -- what is soaked -------------------------------------------------------------------------


class Target(Protocol):
    """A running balancer and the means to kill its replicas behind its back."""

    backend: str
    url: str

    def victims(self, status: dict[str, Any]) -> dict[str, str]:
        """name -> the id to kill, of the replicas that are up now (blocking)."""
        ...

    def kill(self, name: str, ident: str) -> None:
        """Kill that replica without warning (blocking)."""
        ...

    def running(self) -> list[str]:
        """Names of the replicas the OS or engine runs for this pool (blocking)."""
        ...

    def note(self, status: dict[str, Any]) -> None:
        """Remember what /lbproxy/status said (the process target tracks pids from it)."""
        ...

    def leaked(self) -> list[str]:
        """What is still running or left behind once the balancer has stopped (blocking)."""
        ...


def _up(status: dict[str, Any]) -> dict[str, str]:
    return {
        r["name"]: str(r["backend_id"])
        for r in status["replicas"]
        if r["state"] == "up" and r["backend_id"]
    }


@dataclass
class ProcessTarget:
    url: str
    backend: str = "process"
    pids: set[int] = field(default_factory=set)  # every replica pid seen, for the leak check
    _last_status: dict[str, Any] = field(default_factory=dict)

    def victims(self, status: dict[str, Any]) -> dict[str, str]:
        self.note(status)
        return {name: pid for name, pid in _up(status).items() if pid_alive(int(pid))}

    def note(self, status: dict[str, Any]) -> None:
        self._last_status = status
        for r in status["replicas"]:
            if r["backend_id"]:
                self.pids.add(int(r["backend_id"]))

    def kill(self, name: str, ident: str) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(ident), signal.SIGKILL)

    def running(self) -> list[str]:
        return sorted(
            r["name"]
            for r in self._last_status.get("replicas", [])
            if r["backend_id"] and pid_alive(int(r["backend_id"]))
        )

    def leaked(self) -> list[str]:
        """Replica pids still alive after the balancer stopped (waits up to 5 s)."""
        deadline = time.monotonic() + 5
        alive = [p for p in self.pids if pid_alive(p)]
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [p for p in alive if pid_alive(p)]
        return [f"pid {p}" for p in sorted(alive)]


@dataclass
class DockerTarget:
    stack: ComposeStack
    url: str
    backend: str = "docker"

    def victims(self, status: dict[str, Any]) -> dict[str, str]:
        up = _up(status)
        listed = self.stack.replicas()  # docker ps --filter label=lbproxy.control.pool=<pool>
        return {name: cid for name, cid in listed.items() if up.get(name) == cid}

    def note(self, status: dict[str, Any]) -> None:
        pass

    def kill(self, name: str, ident: str) -> None:
        subprocess.run(["docker", "kill", ident], capture_output=True, check=False, timeout=30)

    def running(self) -> list[str]:
        return sorted(self.stack.replicas())

    def leaked(self) -> list[str]:
        left = [f"container {name}" for name in self.stack.replicas(all_states=True)]
        net = subprocess.run(
            ["docker", "network", "ls", "-q", "--filter", f"name=^{self.stack.network}$"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        return left + ([f"network {self.stack.network}"] if net else [])


# -- the figures ----------------------------------------------------------------------------


@dataclass
class Kill:
    at_s: float  # seconds after the load started
    victim: str
    ident: str  # pid or container id
    wall: float  # time.time() of the kill
    detected_ms: float | None = None  # first died/heartbeat_down after the kill
    up_ms: float | None = None  # the replacement passed its heartbeats and joined the ring
    serving_ms: float | None = None  # the replacement answered its first proxied request


@dataclass
class SoakResult:
    backend: str
    duration_s: float
    kill_every_s: float
    concurrency: int
    seed: int
    url: str
    names_before: list[str]
    names_after: list[str] = field(default_factory=list)
    requests: int = 0
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    rps: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    per_replica: dict[str, int] = field(default_factory=dict)
    kills: list[Kill] = field(default_factory=list)
    skipped_kills: int = 0  # kill times when no replica was up to kill
    replacements: int = 0  # seen in the events
    replacements_counted: int = 0  # the balancer's own counter (/lbproxy/status), delta
    slowest_recovery_ms: float | None = None
    median_recovery_ms: float | None = None
    unrecovered: list[str] = field(default_factory=list)
    pool_back: bool = False
    pool_problem: str = ""
    leaked: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return (
            self.failed == 0
            and self.pool_back
            and not self.unrecovered
            and not self.leaked
            and bool(self.kills)
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        return out


class EventTail:
    """Reads /lbproxy/events incrementally (``since``) so the bounded log never drops one."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url
        self.seq = 0
        self.events: list[dict[str, Any]] = []

    async def poll(self) -> None:
        async with self._session.get(
            self._url + "/lbproxy/events", params={"since": str(self.seq)}
        ) as resp:
            resp.raise_for_status()
            new: list[dict[str, Any]] = (await resp.json())["message"]
        self.events.extend(new)
        if new:
            self.seq = max(e["seq"] for e in new)


def replacements_in(events: list[dict[str, Any]]) -> int:
    """``up`` events that follow a death or heartbeat loss of the same name."""
    pending: set[str] = set()
    count = 0
    for event in sorted(events, key=lambda e: e["seq"]):
        if event["kind"] in DETECTED:
            pending.add(event["replica"])
        elif event["kind"] == "up" and event["replica"] in pending:
            pending.discard(event["replica"])
            count += 1
    return count


def time_kills(kills: list[Kill], events: list[dict[str, Any]]) -> None:
    """Fill each kill's detection, recovery and first-response times from the events."""
    ordered = sorted(events, key=lambda e: e["seq"])
    for kill in kills:
        detected_at: float | None = None
        for event in ordered:
            if event["replica"] != kill.victim or event["time"] < kill.wall - 0.001:
                continue
            ms = (event["time"] - kill.wall) * 1000
            if detected_at is None:
                if event["kind"] in DETECTED:
                    detected_at = event["time"]
                    kill.detected_ms = ms
            elif kill.up_ms is None and event["kind"] == "up":
                kill.up_ms = ms
            elif kill.up_ms is not None and event["kind"] == "first_response":
                kill.serving_ms = ms
                break
            elif kill.up_ms is not None and event["kind"] in DETECTED:
                break  # the replacement died in turn before it served: a later kill's


async def _json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        resp.raise_for_status()
        return (await resp.json())["message"]


async def _pool_problem(
    session: aiohttp.ClientSession, target: Target, names: list[str]
) -> tuple[str, dict[str, Any]]:
    """'' when the pool holds exactly ``names``, all up, on the ring and running."""
    rep = await _json(session, target.url + "/rep")
    status = await _json(session, target.url + "/lbproxy/status")
    target.note(status)
    if sorted(rep["replicas"]) != sorted(names) or rep["N"] != len(names):
        return f"/rep holds {rep['replicas']}, expected {names}", status
    down = [r["name"] for r in status["replicas"] if r["state"] != "up"]
    if down:
        return f"not up: {down}", status
    if sorted(status["ring"]) != sorted(names):
        return f"ring holds {sorted(status['ring'])}", status
    running = await asyncio.to_thread(target.running)
    if running != sorted(names):
        return f"running: {running}", status
    return "", status


async def soak(
    target: Target,
    *,
    duration: float,
    kill_every: float,
    concurrency: int,
    seed: int,
    max_requests: int,
    settle: float,
) -> SoakResult:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        names: list[str] = (await _json(session, target.url + "/rep"))["replicas"]
        problem, status = await _pool_problem(session, target, names)
        if problem:
            raise RuntimeError(f"the pool is not whole before the soak: {problem}")
        replacements_before = int(status["replacements"])
        result = SoakResult(
            target.backend, duration, kill_every, concurrency, seed, target.url, list(names)
        )
        tail = EventTail(session, target.url)
        await tail.poll()
        tail.events.clear()  # only what happens from here on

        stop = asyncio.Event()
        load = asyncio.create_task(
            run_load(
                target.url,
                requests=max_requests,
                concurrency=concurrency,
                ids=make_ids("random", 50_000, seed),
                stop=stop,
                timeout=10.0,
            )
        )
        started = loop.time()
        try:

            async def wait_until(when: float) -> None:
                while not load.done():
                    left = when - loop.time()
                    if left <= 0:
                        return
                    await asyncio.sleep(min(POLL, left))
                    await tail.poll()

            n_kills = max(0, int((duration - 1e-9) // kill_every))
            for k in range(1, n_kills + 1):
                await wait_until(started + k * kill_every)
                if load.done():
                    break
                status = await _json(session, target.url + "/lbproxy/status")
                victims = await asyncio.to_thread(target.victims, status)
                if not victims:
                    result.skipped_kills += 1
                    continue
                victim = rng.choice(sorted(victims))
                wall = time.time()
                await asyncio.to_thread(target.kill, victim, victims[victim])
                result.kills.append(
                    Kill(round(loop.time() - started, 3), victim, victims[victim], wall)
                )
            await wait_until(started + duration)

            # Keep the load on until the pool is whole again and every kill has recovered.
            settle_until = loop.time() + settle
            while loop.time() < settle_until and not load.done():
                await tail.poll()
                time_kills(result.kills, tail.events)
                problem, _ = await _pool_problem(session, target, names)
                if not problem and all(k.up_ms is not None for k in result.kills):
                    break
                await asyncio.sleep(POLL)
            await asyncio.sleep(0.5)  # a moment of load on the recovered pool
        finally:
            stop.set()
            load_result: LoadResult = await load
        await tail.poll()
        problem, status = await _pool_problem(session, target, names)
        result.names_after = (await _json(session, target.url + "/rep"))["replicas"]
        result.replacements_counted = int(status["replacements"]) - replacements_before

    time_kills(result.kills, tail.events)
    result.requests = load_result.completed
    result.ok = load_result.ok
    result.failed = load_result.failed
    result.errors = dict(sorted(load_result.errors.items()))
    result.rps = round(load_result.rps, 1)
    lat = load_result.latency
    result.latency_ms = {
        "p50": round(lat.p50, 2),
        "p90": round(lat.p90, 2),
        "p99": round(lat.p99, 2),
        "max": round(lat.max, 2),
    }
    result.per_replica = dict(sorted(load_result.per_replica.items()))
    result.replacements = replacements_in(tail.events)
    recoveries = [k.up_ms for k in result.kills if k.up_ms is not None]
    result.unrecovered = [f"{k.victim}@{k.at_s}s" for k in result.kills if k.up_ms is None]
    if recoveries:
        result.slowest_recovery_ms = round(max(recoveries), 1)
        result.median_recovery_ms = round(statistics.median(recoveries), 1)
    result.pool_back = not problem and sorted(result.names_after) == sorted(names)
    result.pool_problem = problem
    return result


# -- running it -----------------------------------------------------------------------------


@contextlib.contextmanager
def process_target(replicas: int) -> Iterator[ProcessTarget]:
    with run_balancer(replicas=replicas) as lb:
        yield ProcessTarget(lb.url)


@contextlib.contextmanager
def docker_target(replicas: int, project: str) -> Iterator[DockerTarget]:
    build = subprocess.run(
        ["bash", "scripts/ensure-images.sh"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if build.returncode != 0:
        raise RuntimeError(f"building the images failed:\n{build.stdout[-3000:]}{build.stderr}")
    stack: ComposeStack | None = None
    try:
        with compose_stack(
            str(ROOT),
            project=project,
            replicas=replicas,
            extra_env={"LBPROXY_HEARTBEAT_INTERVAL": "0.5", "LBPROXY_LOG_LEVEL": "warning"},
        ) as stack:
            deadline = time.monotonic() + 60
            while len(stack.replicas()) < replicas and time.monotonic() < deadline:
                time.sleep(0.2)
            yield DockerTarget(stack, stack.url)
    finally:
        if stack is not None:
            stack.remove_leftovers()


def run(
    backend: str,
    *,
    duration: float = 60.0,
    kill_every: float = 5.0,
    concurrency: int = 16,
    seed: int | None = None,
    replicas: int = 3,
    max_requests: int | None = None,
    settle: float = 30.0,
    project: str = "lbproxy-soak",
) -> SoakResult:
    """One soak, start to cleanup; the leak check runs after the balancer has stopped."""
    if duration <= 0 or kill_every <= 0 or concurrency < 1 or replicas < 1:
        raise ValueError("duration, kill-every, concurrency and replicas must be positive")
    seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    cap = max_requests if max_requests is not None else int(duration * 20_000)
    began = time.monotonic()
    target_cm: contextlib.AbstractContextManager[Target] = (
        process_target(replicas) if backend == "process" else docker_target(replicas, project)
    )
    with target_cm as target:
        result = asyncio.run(
            soak(
                target,
                duration=duration,
                kill_every=kill_every,
                concurrency=concurrency,
                seed=seed,
                max_requests=cap,
                settle=settle,
            )
        )
    result.leaked = target.leaked()
    result.wall_s = round(time.monotonic() - began, 1)
    return result


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_report(r: SoakResult) -> str:
    lat = r.latency_ms
    lines = [
        f"lbproxy chaos soak: backend={r.backend} N={len(r.names_before)} "
        f"duration={r.duration_s:g}s kill-every={r.kill_every_s:g}s "
        f"concurrency={r.concurrency} seed={r.seed}",
        "",
        "| figure | value |",
        "|---|---|",
        f"| requests sent | {r.requests} ({r.rps:.0f} req/s) |",
        f"| failed | {r.failed}"
        + (" (" + ", ".join(f"{k}: {v}" for k, v in r.errors.items()) + ")" if r.errors else "")
        + " |",
        f"| latency ms | p50 {lat.get('p50', 0):.2f}, p99 {lat.get('p99', 0):.2f}, "
        f"max {lat.get('max', 0):.2f} |",
        f"| kills | {len(r.kills)}"
        + (f" ({r.skipped_kills} skipped: nothing up)" if r.skipped_kills else "")
        + " |",
        f"| replacements observed | {r.replacements} (balancer's counter: "
        f"{r.replacements_counted}) |",
        f"| recovery ms (kill -> up) | median {_ms(r.median_recovery_ms)}, "
        f"slowest {_ms(r.slowest_recovery_ms)} |",
        f"| unrecovered | {', '.join(r.unrecovered) or 'none'} |",
        f"| pool at the end | N={len(r.names_after)} "
        + ("back, same names" if r.pool_back else f"NOT back: {r.pool_problem}")
        + " |",
        f"| leftovers after cleanup | {', '.join(r.leaked) or 'none'} |",
        "",
        "| # | at s | victim | detected ms | up ms | first response ms |",
        "|---|---|---|---|---|---|",
    ]
    for i, k in enumerate(r.kills, 1):
        lines.append(
            f"| {i} | {k.at_s:.1f} | {k.victim} | {_ms(k.detected_ms)} | {_ms(k.up_ms)} "
            f"| {_ms(k.serving_ms)} |"
        )
    lines += ["", f"{'PASS' if r.passed else 'FAIL'} in {r.wall_s:.0f} s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    doc = (__doc__ or "").strip().splitlines()[0]
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--backend", choices=("process", "docker"), default="process")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load [60]")
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds between kills [5]")
    parser.add_argument("--concurrency", type=int, default=16, help="connections [16]")
    parser.add_argument("--seed", type=int, default=None, help="victims and ids (default: fresh)")
    parser.add_argument("--replicas", type=int, default=3, help="pool size N [3]")
    parser.add_argument(
        "--max-requests", type=int, default=None, help="request cap [20000 per second]"
    )
    parser.add_argument(
        "--settle", type=float, default=30.0, help="max seconds to wait for recovery [30]"
    )
    parser.add_argument("--project", default="lbproxy-soak", help="compose project (docker)")
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    args = parser.parse_args(argv)
    result = run(
        args.backend,
        duration=args.duration,
        kill_every=args.kill_every,
        concurrency=args.concurrency,
        seed=args.seed,
        replicas=args.replicas,
        max_requests=args.max_requests,
        settle=args.settle,
        project=args.project,
    )
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
