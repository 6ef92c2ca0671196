"""Membership churn under steady load: does a ring change stall the requests around it?

``--replica nginx`` runs nginx replicas (bench/nginx_replica.sh) that boot in milliseconds:
what a change then costs the load is the balancer's share alone.

Two parts, both printing Markdown tables (issue 10's churn benchmark, docs/performance.md):

**Process level** (``--replicas 3,100``): a real ``lbproxy serve --backend process`` with N
``server_app`` replicas and a steady load of ``--clients`` keep-alive clients (random 6-digit
``X-Request-ID`` on ``GET /home``). After a steady period, in turn: ``/add`` 1, ``/rm`` 1
(the replica just added), a ``kill -9`` of a replica (until its replacement is up again), and
an ejection (the victim is SIGSTOPped, a few requests for keys it owns time out on it and
eject it, then it is SIGCONTed and readmitted by its heartbeat). For each change: the slowest
request and the p99 while it happens (from the call until it completed, plus ``--tail``
seconds) against the same figures over the steady periods before each change. During the
ejection the load avoids the victim's own keys, which wait out the read timeout by design.
``nothing`` is the method's A/A control (a window cut and read like a change's, with no
change); ``spawn`` starts a replica beside the balancer (no change: the machine's share).

``--rate R`` makes the load an open loop (wrk2's constant throughput, each request timed
from when it was due) that can leave the machine headroom; ``--repeat K`` runs every change
K times between steady periods and reads the median window (one window is noise here)::

    flock /tmp/lbproxy-heavy.lock .venv/bin/python bench/churn.py --replicas 3 \
        --replica nginx --steady 1.5 --repeat 15 --rate 1500 --clients 32

**Ring level** (``--ring 3,100,1000``): the pool in this process, no HTTP. For each change
(add, remove, death, ejection, readmission) the longest event-loop stall while it is applied
(a 1 ms ticker), how long until the ring reflects it, plus build time, removal derivation
time, balance (largest share / mean) and memory of a ring.

``--baseline DIR`` measures another lbproxy tree (e.g. ``git archive <rev> | tar -x -C DIR``)
in the same run, interleaved with this checkout, so before/after share the machine's state::

    flock /tmp/lbproxy-heavy.lock .venv/bin/python bench/churn.py --replicas 3,100 \\
        --ring 3,100,1000 --baseline /tmp/lbproxy-before
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (
    ROOT,
    free_port,
    lbproxy_cmd,
    log,
    owned_processes,
    run_main,
    wait_http,
)

from lbproxy_tools.launcher import clean_env

HELLO = "Hello from Server: "


# -- process level ----------------------------------------------------------------------------


@dataclass
class Sample:
    start: float
    latency: float
    ok: bool
    key: str = ""
    why: str = ""  # a failure's status or exception; the slowest request's explanation

    @property
    def end(self) -> float:
        return self.start + self.latency


@dataclass
class Load:
    """GET /home with random ids until stopped, from ``clients`` keep-alive connections.

    Closed loop (``rate`` 0): each client sends its next request when the last one answered.
    Open loop (``rate`` > 0, wrk2's constant throughput): requests are due every 1/``rate``
    seconds whatever happens, share the ``clients`` connections, and each one's latency runs
    from when it was due, not from when it was sent. A closed loop under-reports a stall
    (coordinated omission: its clients stop sending while they wait), and at full speed it
    keeps both cores busy, so anything else the machine does (starting a process) shows in
    its p99; an open loop below capacity leaves the headroom a real deployment has.
    """

    url: str
    clients: int
    seed: int
    rate: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    #: When set (during an ejection), the keys to draw from instead of random ids.
    ids: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    #: When each request in flight started (the ejection waits for older ones).
    started: dict[int, float] = field(default_factory=dict)
    #: Open loop: requests sent late because the load's own loop fell behind its schedule.
    late: int = 0

    async def settled_since(self, moment: float) -> None:
        """Until every request in flight started after ``moment`` (so it used the key set
        chosen then)."""
        while any(t < moment for t in self.started.values()):
            await asyncio.sleep(0.005)

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.clients, force_close=False)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            if self.rate > 0:
                await self._open_loop(session)
            else:
                await asyncio.gather(*(self._client(session, i) for i in range(self.clients)))

    def _key(self, rng: random.Random) -> str:
        return rng.choice(self.ids) if self.ids else str(rng.randrange(100_000, 1_000_000))

    async def _one(self, session: aiohttp.ClientSession, index: int, key: str, due: float) -> None:
        """One request, its latency from ``due``; recorded when it ends."""
        loop = asyncio.get_running_loop()
        self.started[index] = due
        ok = False
        why = ""
        try:
            async with session.get(self.url + "/home", headers={"X-Request-ID": key}) as r:
                body = await r.read()
                ok = r.status == 200
                why = body[:160].decode("utf-8", "replace")
                if not ok:
                    why = f"{r.status} {why}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        self.samples.append(Sample(due, loop.time() - due, ok, key, why))
        self.started.pop(index, None)

    async def _client(self, session: aiohttp.ClientSession, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        loop = asyncio.get_running_loop()
        while not self.stop.is_set():
            await self._one(session, index, self._key(rng), loop.time())

    async def _open_loop(self, session: aiohttp.ClientSession) -> None:
        rng = random.Random(self.seed)
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.rate
        inflight: set[asyncio.Task[None]] = set()
        due = loop.time()
        index = 0
        while not self.stop.is_set():
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > interval:
                self.late += 1
            # In flight from now, not from the task's first step: the ejection's
            # ``settled_since`` must see a request whose key was drawn before its switch
            # (two of them once went to the stopped victim and waited out the timeout).
            self.started[index] = due
            task = asyncio.create_task(self._one(session, index, self._key(rng), due))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            index += 1
            due += interval
        await asyncio.gather(*inflight)


def pct(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def _status(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "/lbproxy/status") as r:
        body: dict[str, Any] = (await r.json())["message"]
        return body


async def _wait(
    session: aiohttp.ClientSession, url: str, check: Callable[[dict[str, Any]], bool], limit: float
) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check(await _status(session, url)):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the balancer did not reach the expected state within {limit:g}s")


async def _owners(session: aiohttp.ClientSession, url: str, keys: list[str]) -> dict[str, str]:
    """Which replica serves each key now (read from the /home body)."""
    out: dict[str, str] = {}
    sem = asyncio.Semaphore(8)

    async def one(key: str) -> None:
        async with sem, session.get(url + "/home", headers={"X-Request-ID": key}) as r:
            body = await r.json()
            out[key] = body["message"].removeprefix(HELLO)

    await asyncio.gather(*(one(k) for k in keys))
    return out


def served_by(sample: Sample) -> str:
    """The replica that answered a sample (its /home body names it), or ''."""
    start = sample.why.find(HELLO)
    if start < 0:
        return ""
    return sample.why[start + len(HELLO) :].split('"', 1)[0]


def write_trace(path: Path, samples: list[Sample], t0: float, t1: float) -> None:
    """Every request of a window, for reading where its slow ones came from: seconds from
    the change's call (start, end), latency ms, the replica that answered, ok; and when the
    call returned."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        [round(s.start - t0, 5), round(s.latency * 1000, 3), served_by(s), s.ok] for s in samples
    ]
    path.write_text(json.dumps({"applied_s": t1 - t0, "requests": rows}))


def explain(samples: list[Sample], t0: float) -> None:
    """Why the worst requests of a step were slow or failed (the table has no room),
    and when the slow ones came: the p99 of each 250 ms after the change."""
    buckets: dict[int, list[float]] = {}
    for s in samples:
        buckets.setdefault(int((s.start + s.latency - t0) // 0.25), []).append(s.latency)
    log(
        "  p99 ms per 250 ms from the change: "
        + " ".join(f"{k * 250:+d}:{pct(v, 99) * 1000:.1f}" for k, v in sorted(buckets.items()))
    )
    for s in sorted(samples, key=lambda s: (s.ok, -s.latency))[:3]:
        if s.ok and s.latency < 0.05:
            break
        log(
            f"  {'ok' if s.ok else 'FAILED'} {s.latency * 1000:.1f} ms, started "
            f"{(s.start - t0) * 1000:+.0f} ms from the change, key {s.key} {s.why}"
        )


#: The spawn step's launcher: a process of its own that starts and stops the replica when
#: told on stdin, so the load's process does none of it (a ``Popen`` there, even on a
#: thread, holds the GIL the load's loop needs for milliseconds and counted the load's own
#: lost time as the machine's).
LAUNCHER = r"""
import os, subprocess, sys
proc = None
for line in sys.stdin:
    cmd, _, rest = line.strip().partition(" ")
    if cmd == "start":
        port, argv = rest.split(" ", 1)
        env = {**os.environ, "PORT": port, "SERVER_ID": "spawn", "HOST": "127.0.0.1"}
        proc = subprocess.Popen(argv.split("\0"), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    elif cmd == "stop" and proc is not None:
        proc.terminate()
        proc.wait()
        proc = None
    print("ok", flush=True)
"""


class Launcher:
    """Drives ``LAUNCHER`` (started before the load, so its own fork costs nothing)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    @classmethod
    async def open(cls) -> Launcher:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            LAUNCHER,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=clean_env(),
            cwd=str(ROOT),
        )
        return cls(proc)

    async def _ask(self, line: str) -> None:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(line.encode() + b"\n")
        await self._proc.stdin.drain()
        if (await self._proc.stdout.readline()).strip() != b"ok":
            raise RuntimeError("the spawn step's launcher ended")

    async def start(self, argv: list[str], port: int) -> None:
        await self._ask(f"start {port} " + "\0".join(argv))

    async def stop(self) -> None:
        await self._ask("stop")

    async def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        await self._proc.wait()


async def churn_run(
    url: str, admin_url: str, n: int, args: argparse.Namespace, label: str = "this"
) -> list[dict[str, Any]]:
    """One balancer: steady, then each change in turn; one row per change.

    Admin calls go to the separate admin port: on the public one they would be bound by the
    short read timeout the ejection step needs.
    """
    launcher = await Launcher.open()
    load = Load(url, args.clients, seed=n, rate=args.rate)
    runner = asyncio.create_task(load.run())
    loop = asyncio.get_running_loop()
    #: Each steady period's (start, end): the change windows are compared with steady
    #: windows of their own length cut from these (``like_for_like``).
    periods: list[tuple[float, float]] = []
    #: Each change's (name, call, call returned, window end).
    changes: list[tuple[str, float, float, float]] = []
    limit = 60.0 + n
    async with aiohttp.ClientSession() as admin:
        # Only times are taken while the load runs: sorting samples into windows (tens of
        # thousands of them) or writing traces blocked this loop, the load's own, for
        # 10-60 ms right before each change, and the requests it held were counted in the
        # change's window (the slowest of a spawn or an /add had started 63 ms before it).
        async def steady_period() -> None:
            t0 = loop.time()
            await asyncio.sleep(args.steady)
            periods.append((t0, loop.time()))

        async def change(name: str, action: Callable[[], Any]) -> None:
            await steady_period()
            prepare = preparations.get(name)
            if prepare is not None:
                await prepare()
            t0 = loop.time()
            await action()
            t1 = loop.time()
            await asyncio.sleep(args.tail)
            changes.append((name, t0, t1, loop.time()))

        added: list[str] = []

        async def add() -> None:
            async with admin.post(admin_url + "/add", json={"n": 1, "hostnames": ["churn-1"]}) as r:
                if r.status != 200:
                    raise RuntimeError(f"/add answered {r.status}: {await r.text()}")
            added.append("churn-1")

        async def rm() -> None:
            async with admin.delete(admin_url + "/rm", json={"n": 1, "hostnames": added}) as r:
                if r.status != 200:
                    raise RuntimeError(f"/rm answered {r.status}: {await r.text()}")
            added.clear()

        #: What a step's preparation chose, outside the step's window.
        chosen: dict[str, Any] = {}

        def up_pids(status: dict[str, Any]) -> dict[str, str]:
            return {r["name"]: r["backend_id"] for r in status["replicas"] if r["state"] == "up"}

        async def kill_prepare() -> None:
            # Before the window: at N = 100 the status lists 100 replicas, and asking for it
            # at the kill put the balancer's answer to the bench inside the kill's window.
            chosen["before"] = up_pids(await _status(admin, admin_url))

        async def kill() -> None:
            before = chosen["before"]
            victim = sorted(before)[-1]
            # the replica's whole process group: its pid leads it (server_app itself, or
            # the wrapper shell of a --replica-cmd, which alone would leave nginx running)
            os.killpg(int(before[victim]), signal.SIGKILL)
            await _wait(
                admin,
                admin_url,
                lambda s: (
                    up_pids(s).get(victim) not in (None, before[victim])
                    and len(up_pids(s)) == len(before)
                ),
                limit,
            )

        async def eject_prepare() -> None:
            pids = up_pids(await _status(admin, admin_url))
            probe = [str(k) for k in random.Random(7).sample(range(100_000, 1_000_000), 400)]
            owners = await _owners(admin, url, probe)
            # The replica owning the most probe keys (at N = 100 a fixed one may own fewer
            # than --eject-after of 400), the first by name on a tie.
            victim = min(pids, key=lambda name: (-sum(o == name for o in owners.values()), name))
            owned = [k for k, o in owners.items() if o == victim]
            if len(owned) < args.eject_after:
                raise RuntimeError(f"too few probe keys land on {victim}")
            # The load keeps to keys the victim does not own: those wait out the read timeout.
            space = [str(k) for k in random.Random(n).sample(range(100_000, 1_000_000), 2000)]
            load.ids = [k for k, o in (await _owners(admin, url, space)).items() if o != victim]
            # Requests begun before the switch may still be on the victim: wait them out, or
            # the SIGSTOP holds them for the read timeout (a 504 after ~0.6 s, which the
            # first runs of this step reported as an unexplained failure).
            await load.settled_since(loop.time())
            chosen.update(victim=victim, pid=int(pids[victim]), owned=owned)

        async def eject() -> None:
            victim, pid, owned = chosen["victim"], chosen["pid"], chosen["owned"]
            os.killpg(pid, signal.SIGSTOP)
            try:
                timeout = aiohttp.ClientTimeout(total=10)
                async with aiohttp.ClientSession(timeout=timeout) as trig:

                    async def hit(key: str) -> None:
                        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                            async with trig.get(url + "/home", headers={"X-Request-ID": key}) as r:
                                await r.read()

                    await asyncio.gather(*(hit(k) for k in owned[: args.eject_after]))
                await _wait(
                    admin,
                    admin_url,
                    lambda s: any(
                        r["name"] == victim and r["state"] == "ejected" for r in s["replicas"]
                    ),
                    5,
                )
            finally:
                os.killpg(pid, signal.SIGCONT)
            await _wait(admin, admin_url, lambda s: victim in s["ring"], limit)
            load.ids = []

        async def spawn() -> None:
            """No change at all: boot one more replica beside the balancer and wait for its
            heartbeat, as a replacement or an /add does, then stop it. What this step costs
            the load is what starting a process costs the machine, not the control plane."""
            port = free_port()
            await launcher.start(spawn_argv(args.replica, port, "spawn"), port)
            try:
                deadline = loop.time() + limit
                while loop.time() < deadline:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with admin.get(f"http://127.0.0.1:{port}/heartbeat") as r:
                            if r.status == 200:
                                return
                    await asyncio.sleep(0.02)
                raise RuntimeError("the spawned replica did not answer")
            finally:
                await launcher.stop()

        async def nothing() -> None:
            """No change and no process: a window cut like a change's, read like one. The
            A/A control of the method: its p99 over steady must come out near 1.0."""

        preparations = {"eject": eject_prepare, "kill -9": kill_prepare}
        await asyncio.sleep(1.0)  # warm-up: connections, caches
        steps = (
            ("nothing", nothing),
            ("spawn", spawn),
            ("add 1", add),
            ("rm 1", rm),
            ("kill -9", kill),
            ("eject", eject),
        )
        for _ in range(args.repeat):
            for name, action in steps:
                if name.split()[0] in args.changes:
                    await change(name, action)
        await steady_period()
    load.stop.set()
    await runner
    await launcher.close()
    if load.rate > 0:
        span = (max(s.start for s in load.samples) - min(s.start for s in load.samples)) or 1.0
        log(
            f"N={n} open loop: {len(load.samples) / span:.0f} requests/s asked at "
            f"{load.rate:g}; {load.late} sent more than one interval late"
        )
    steady: list[Sample] = []
    for index, (t0, t1) in enumerate(periods):
        window = [s for s in load.samples if t0 <= s.end <= t1]
        steady.extend(window)
        if args.trace is not None:
            write_trace(args.trace / f"{label}-{n}-steady{index}.json", window, t0, t0)
    steady.sort(key=lambda s: s.end)
    windows: dict[str, list[dict[str, Any]]] = {}
    for name, t0, t1, t2 in changes:
        during = [s for s in load.samples if t0 <= s.end <= t2]
        seen = windows.setdefault(name, [])
        seen.append({"samples": during, "took": t1 - t0, "window": t2 - t0})
        if args.trace is not None:
            suffix = f"-{len(seen)}" if args.repeat > 1 else ""
            write_trace(args.trace / f"{label}-{n}-{name.split()[0]}{suffix}.json", during, t0, t1)
        log(f"N={n} {name}: {len(during)} requests, applied in {(t1 - t0) * 1000:.0f} ms")
        explain(during, t0)
    base_lat = [s.latency for s in steady]
    out = [
        {
            "n": n,
            "change": "steady",
            "requests": len(steady),
            "failed": sum(not s.ok for s in steady),
            "max_ms": max(base_lat) * 1000,
            "p99_ms": pct(base_lat, 99) * 1000,
            "took_ms": math.nan,
        }
    ]
    for name, seen in windows.items():
        # Repeated changes (--repeat): the median window's p99 (and slowest), read against
        # the median of the steady windows as long; one window alone is noise on a shared
        # machine, where steady windows' p99s vary several-fold.
        p99 = statistics.median(pct([s.latency for s in w["samples"]], 99) for w in seen)
        like = like_for_like(steady, periods, statistics.median(w["window"] for w in seen))
        lat = [s.latency for w in seen for s in w["samples"]]
        out.append(
            {
                "n": n,
                "change": name,
                "windows": len(seen),
                "requests": len(lat),
                "failed": sum(not s.ok for w in seen for s in w["samples"]),
                "max_ms": max(lat) * 1000,
                "median_max_ms": statistics.median(
                    max(s.latency for s in w["samples"]) for w in seen
                )
                * 1000,
                "p99_ms": p99 * 1000,
                "took_ms": statistics.median(w["took"] for w in seen) * 1000,
                "steady_like_p99_ms": statistics.median(like) * 1000 if like else math.nan,
                "steady_like_slower": (
                    sum(x >= p99 for x in like) / len(like) if like else math.nan
                ),
            }
        )
    return out


def like_for_like(
    steady: list[Sample], periods: list[tuple[float, float]], length: float
) -> list[float]:
    """The p99 of every steady window as long as a change's, cut end to end from the steady
    periods: a p99 over 1,500 requests moves by tens of percent from window to window on a
    shared machine, so a change's p99 is read against these, not only against the p99 of
    all steady requests together.

    A request belongs to the window it ended in, in steady windows and change windows
    alike: a stall's victims all end after it, and the same rule on both sides keeps the
    comparison fair (the steady windows once took only requests that began and ended
    inside them, which left out the slow ones straddling a boundary, while a change's
    window took every request that overlapped it).
    """
    out: list[float] = []
    ends = [s.end for s in steady]  # ``steady`` is sorted by end
    for t0, t1 in periods:
        start = t0
        while start + length <= t1:
            lo, hi = bisect.bisect_left(ends, start), bisect.bisect_left(ends, start + length)
            chunk = [s.latency for s in steady[lo:hi]]
            if chunk:
                out.append(pct(chunk, 99))
            start += length
    return out


def _tree_has(tree: Path, word: str) -> bool:
    """Whether the lbproxy tree at ``tree`` knows a setting (its source mentions it)."""
    return any(word in p.read_text() for p in (tree / "lbproxy").glob("*.py"))


#: ``--replica nginx``: a replica that boots in milliseconds, so a change's cost to the load
#: is the balancer's alone (a server_app boot costs about a core for ~0.3 s on its own).
NGINX_REPLICA = ROOT / "bench" / "nginx_replica.sh"


def replica_flags(kind: str) -> list[str]:
    """``lbproxy serve`` flags for the replicas the bench runs."""
    if kind == "nginx":
        return ["--replica-cmd", f"sh {NGINX_REPLICA} {{port}} {{name}}"]
    return []


def spawn_argv(kind: str, port: int, name: str) -> list[str]:
    """The spawn step's command: one replica of the bench's kind, beside the balancer."""
    if kind == "nginx":
        return ["sh", str(NGINX_REPLICA), str(port), name]
    return [sys.executable, "-m", "server_app"]


def process_level(
    n: int, tree: Path, args: argparse.Namespace, label: str = "this"
) -> list[dict[str, Any]]:
    env = clean_env()
    if tree != ROOT:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH")) if p)
    # Like for like: a tree with Envoy-style ejection (an ejected replica stays out for
    # --eject-base-time x ejections) is given the base time asked for (0 by default: back
    # on the next passing heartbeat, as before it), and no cap on the share ejected.
    envoy = _tree_has(tree, "eject_base_time")
    extra = (
        ["--eject-base-time", f"{args.eject_base_time:g}", "--max-eject-percent", "100"]
        if envoy
        else []
    )
    port = free_port()
    admin_port = free_port()
    cmd = lbproxy_cmd(
        port,
        n,
        "--admin-port",
        str(admin_port),
        "--start-timeout",
        str(30 + n),
        "--read-timeout",
        str(args.read_timeout),
        "--eject-after",
        str(args.eject_after),
        *extra,
        *replica_flags(args.replica),
        *shlex.split(args.serve_args),
    )
    url = f"http://127.0.0.1:{port}"
    with owned_processes(600 + 3 * n) as procs:
        proc = procs.start(f"lbproxy-{n}", cmd, env=env, cwd=tree)
        admin_url = f"http://127.0.0.1:{admin_port}"
        wait_http(admin_url + "/rep", 60 + 2 * n, proc)
        rows = asyncio.run(churn_run(url, admin_url, n, args, label))
        procs.stop(proc, timeout=30 + n / 5)
    return rows


# -- ring level ---------------------------------------------------------------------------------


RING_SCRIPT = r"""
import asyncio, gc, json, sys, time, tracemalloc
from lbproxy.control.pool import Pool, ReplicaState
from lbproxy.backends.base import ReplicaHandle
from lbproxy.ring import make_family

n = int(sys.argv[1])
repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 1
try:  # the table `lbproxy serve --replicas n` builds, where the tree sizes it to the pool
    family = make_family("maglev", pool_size=n)
except TypeError:
    family = make_family("maglev")

def handle(name):
    return ReplicaHandle(name, "http://127.0.0.1:1", name)

async def main():
    loop = asyncio.get_running_loop()
    stall = [0.0]
    stop = False

    async def ticker():
        last = loop.time()
        while not stop:
            await asyncio.sleep(0.001)
            now = loop.time()
            stall[0] = max(stall[0], now - last - 0.001)
            last = now

    t = time.perf_counter()
    members = {f"replica-{i}": i for i in range(1, n + 1)}
    ring = family.build(members)
    build_ms = (time.perf_counter() - t) * 1000
    tracemalloc.start()
    snap0 = tracemalloc.get_traced_memory()[0]
    ring2 = family.build(members)
    ring_bytes = tracemalloc.get_traced_memory()[0] - snap0
    tracemalloc.stop()
    del ring2
    shares = list(ring.shares().values())
    balance = max(shares) / (sum(shares) / len(shares))
    # What the loop pays to take a ring from the worker, alone (no scheduler noise): mapping
    # the shared-memory segment where the tree has one, else unpickling the ring.
    import pickle
    share = getattr(ring, "share", None)
    take = []
    for _ in range(5):
        if share is not None:
            from lbproxy.ring import shared
            shipped = pickle.dumps(share(shared.new_name()))
            c0 = time.perf_counter()
            taken = pickle.loads(shipped).attach()
        else:
            shipped = pickle.dumps(ring)
            c0 = time.perf_counter()
            taken = pickle.loads(shipped)
        take.append((time.perf_counter() - c0) * 1000)
        del taken
    take_ms = sorted(take)[len(take) // 2]
    # The first shares() of a ring (the status view, the dashboard) runs on the loop too.
    shipped = pickle.loads(pickle.dumps(ring))
    c0 = time.perf_counter()
    shipped.shares()
    shares_ms = (time.perf_counter() - c0) * 1000

    try:  # builds off the loop where the tree has a builder (issue 10)
        from lbproxy.ring.offload import RingBuilder
        options = {"builder": RingBuilder()}
    except ImportError:
        options = {}
    pool = Pool(family, eject_after=1, **options)
    reps = [pool.add(name, rid) for name, rid in members.items()]
    for r in reps:
        pool.set_handle(r, handle(r.name))
    pool.mark_up(*reps)
    settle = getattr(pool, "settled", None)
    if settle is not None:
        await settle()
    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    rows = {}

    async def measure(name, action, done):
        await asyncio.sleep(0.02)
        stall[0] = 0.0
        t0 = loop.time()
        c0 = time.perf_counter()
        action()
        call_ms = (time.perf_counter() - c0) * 1000
        while not done():
            await asyncio.sleep(0.001)
        until = loop.time() - t0
        await asyncio.sleep(0.01)  # let the ticker see a stall that ended just now
        rows[name] = {"stall_ms": stall[0] * 1000, "call_ms": call_ms,
                      "until_ms": until * 1000}

    # The same wait with nothing happening: what the OS scheduler alone costs the loop on
    # this machine over a window as long as a build's (the worker takes a core meanwhile).
    idle_until = [0.0]
    runs = {"idle": [], "add": []}
    for j in range(repeat):  # an idle window, an addition, its removal; the worst of each
        await measure("idle", lambda: idle_until.__setitem__(0, loop.time() + 3.0),
                      lambda: loop.time() >= idle_until[0])
        runs["idle"].append(rows["idle"])
        if j < repeat - 1:
            extra = pool.add(f"replica-extra-{j}")
            pool.set_handle(extra, handle(extra.name))
            await measure("add", lambda: pool.mark_up(extra),
                          lambda: extra.name in pool.ring.names)
            runs["add"].append(rows["add"])
            pool.remove(extra.name)
    new = pool.add("replica-new")
    pool.set_handle(new, handle(new.name))
    await measure("add", lambda: pool.mark_up(new), lambda: "replica-new" in pool.ring.names)
    runs["add"].append(rows["add"])
    for kind, seen in runs.items():  # the worst window, and every window's stall
        rows[kind] = dict(max(seen, key=lambda r: r["stall_ms"]),
                          all=[r["stall_ms"] for r in seen])
    await measure("remove", lambda: pool.remove("replica-new"),
                  lambda: "replica-new" not in pool.ring.names)
    victim = reps[1]
    await measure("death", lambda: pool.mark_down(victim, "died"),
                  lambda: victim.name not in pool.ring.names)
    pool.set_handle(victim, handle(victim.name))
    await measure("replacement", lambda: pool.mark_up(victim),
                  lambda: victim.name in pool.ring.names)
    other = reps[2]
    await measure("eject", lambda: pool.note_failure(other, "status 500"),
                  lambda: other.name not in pool.ring.names)
    await measure("readmit", lambda: pool.readmit(other), lambda: other.name in pool.ring.names)
    stop = True
    await tick
    print(json.dumps({"n": n, "build_ms": build_ms, "ring_mb": ring_bytes / 2**20,
                      "balance": balance, "take_ms": take_ms, "shares_ms": shares_ms,
                      "changes": rows}))

if __name__ == "__main__":  # the build worker is spawned: it imports this module
    asyncio.run(main())
"""


def ring_level(n: int, tree: Path, repeat: int = 1) -> dict[str, Any]:
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", RING_SCRIPT, str(n), str(repeat)],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"ring bench N={n} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- main ----------------------------------------------------------------------------------------


def _sizes(raw: str) -> list[int]:
    return [int(x) for x in raw.split(",") if x.strip()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--replicas", type=_sizes, default=[3], help="process-level sizes, e.g. 3,100")
    p.add_argument("--ring", type=_sizes, default=[], help="ring-level sizes, e.g. 3,100,1000")
    p.add_argument(
        "--ring-repeat",
        type=int,
        default=1,
        help="ring level: idle windows and additions measured this many times (worst shown)",
    )
    p.add_argument(
        "--replica",
        choices=("server_app", "nginx"),
        default="server_app",
        help="what the replicas run: server_app (Python, the default) or nginx "
        "(bench/nginx_replica.sh: boots in milliseconds, so a change costs only the balancer)",
    )
    p.add_argument(
        "--serve-args",
        default="",
        help="more `lbproxy serve` flags for every tree, e.g. '--hash rendezvous' (no build "
        "worker: tells the worker's share of a change from the rest)",
    )
    p.add_argument(
        "--clients",
        type=int,
        default=8,
        help="keep-alive connections (closed loop: one client each; open loop: shared)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="open loop: requests per second, each timed from when it was due (wrk2's "
        "constant throughput); 0 (the default) is a closed loop at full speed",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the changes this many times, interleaved with steady periods; each row "
        "then shows the median window's p99 and slowest request",
    )
    p.add_argument("--steady", type=float, default=3.0, help="steady seconds before each change")
    p.add_argument("--tail", type=float, default=0.5, help="seconds counted after a change")
    p.add_argument("--read-timeout", type=float, default=0.5)
    p.add_argument("--eject-after", type=int, default=3)
    p.add_argument(
        "--eject-base-time",
        type=float,
        default=0.0,
        help="given to trees that have it; 0 readmits on the next passing heartbeat",
    )
    p.add_argument(
        "--changes",
        default="nothing,spawn,add,rm,kill,eject",
        help="steps in order; nothing changes nothing (the method's A/A control: its ratio "
        "must be near 1); spawn boots a replica beside the balancer (no change): the "
        "machine's share of a replacement's or an addition's cost",
    )
    p.add_argument("--baseline", type=Path, help="another lbproxy tree, measured interleaved")
    p.add_argument(
        "--baseline-only",
        action="store_true",
        help="measure only --baseline (split a run that would not fit one locked slot)",
    )
    p.add_argument("--json", type=Path, help="also write every row here")
    p.add_argument(
        "--trace",
        type=Path,
        help="write every request of each window here (TREE-N-CHANGE.json: seconds from the "
        "change, latency ms, the replica that answered), to see where slow ones came from",
    )
    args = p.parse_args()
    args.changes = set(args.changes.split(","))
    if args.repeat > 1 and "add" in args.changes and "rm" not in args.changes:
        p.error("--repeat with add needs rm too (each /add 1 is removed before the next)")
    trees: list[tuple[str, Path]] = []
    if args.baseline:
        trees.append(("before", args.baseline.resolve()))
    if not args.baseline_only:
        trees.append(("after" if args.baseline else "this", ROOT))
    rows: list[dict[str, Any]] = []
    for n in args.replicas:
        for label, tree in trees:
            log(f"process level: {label} N={n}")
            for row in process_level(n, tree, args, label):
                rows.append({"tree": label, **row})
    ring_rows: list[dict[str, Any]] = []
    for n in args.ring:
        for label, tree in trees:
            log(f"ring level: {label} N={n}")
            ring_rows.append({"tree": label, **ring_level(n, tree, args.ring_repeat)})
    if rows:
        print(
            "\n| tree | N | change | windows | requests | failed | slowest ms (median window) "
            "| p99 ms (median window) | applied in ms | p99 of steady windows as long, median ms "
            "| p99 over steady | steady windows as slow |"
        )
        print("|---" * 12 + "|")
        for r in rows:
            like = r.get("steady_like_p99_ms", math.nan)
            print(
                f"| {r['tree']} | {r['n']} | {r['change']} | {r.get('windows', '')} "
                f"| {r['requests']} | {r['failed']} "
                f"| {r['max_ms']:.1f} ({r.get('median_max_ms', math.nan):.1f}) "
                f"| {r['p99_ms']:.1f} | {r['took_ms']:.0f} | {like:.1f} "
                f"| {r['p99_ms'] / like:.2f} | {r.get('steady_like_slower', math.nan):.0%} |"
            )
    if ring_rows:
        kinds = ("idle", "add", "remove", "death", "replacement", "eject", "readmit")
        print(
            "\n| tree | N | build ms | ring MiB | max/mean share | take-in ms | shares ms | "
            + " | ".join(f"{k} stall ms (on ring after)" for k in kinds)
            + " |"
        )
        print("|---" * (7 + len(kinds)) + "|")
        for r in ring_rows:
            cells = " | ".join(
                f"{r['changes'][k]['stall_ms']:.1f} ({r['changes'][k]['until_ms']:.0f})"
                for k in kinds
            )
            print(
                f"| {r['tree']} | {r['n']} | {r['build_ms']:.0f} | {r['ring_mb']:.1f} "
                f"| {r['balance']:.3f} | {r.get('take_ms', math.nan):.2f} "
                f"| {r.get('shares_ms', math.nan):.2f} | {cells} |"
            )
        if args.ring_repeat > 1:
            print()
            for r in ring_rows:
                stalls = "; ".join(
                    f"{k} " + ", ".join(f"{x:.1f}" for x in r["changes"][k].get("all", []))
                    for k in ("idle", "add")
                )
                print(f"- {r['tree']} N={r['n']}, every window's stall in ms: {stalls}")
    if args.json:
        args.json.write_text(json.dumps({"process": rows, "ring": ring_rows}, indent=1))
    return 0


if __name__ == "__main__":
    run_main(main)
