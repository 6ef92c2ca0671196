"""A-5 (issue 12): an autoscaled pool against fixed pools of MIN and MAX, under open-loop load.

Each scenario starts a real ``lbproxy serve`` (process backend, the user's default heartbeat)
whose replicas have a service time (``SERVER_DELAY_MS``) and a fixed worker pool
(``SERVER_CONCURRENCY``), so the replicas are the bottleneck: one replica serves at most
CONCURRENCY / DELAY requests per second. The load is ``run_load(schedule=...)``, the one
load engine, open loop: requests go on a stepped and ramped schedule whatever the answers
do, with latency and the client timeout counted from the scheduled time. Meanwhile a
sampler reads ``/lbproxy/metrics`` every 0.5 s (pool sizes, in-flight requests); the
autoscaler's decisions come from ``/lbproxy/events``. Then a scale-to-zero pass measures
cold starts.

    lbproxy analyze --only a5            # ~6 min; docs/analysis/a5_autoscale.{md,json,png}
    lbproxy analyze --only a5 --quick    # every phase halved (a smoke run), 1 cold start

Only 127.0.0.1 is contacted; every balancer started is stopped on any exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from lbproxy_tools.launcher import checkout_revision
from lbproxy_tools.loadtest import LoadResult, Profile, make_ids, run_load, schedule_of

#: The replica model: 100 ms per request, 4 at once -> 40 req/s per replica at most.
DELAY_MS = 100
CONCURRENCY = 4
#: KPA's 70% of the 4 slots, rounded: 3 in flight per replica.
TARGET = 3
MIN, MAX = 1, 10
#: Sized for two cores shared with other work: peak 240 req/s needs 8 replicas at the
#: target (240 x 0.1 s = 24 in flight / 3). The issue's 50 -> 1,000 -> 3,000 -> 200 req/s
#: is scaled down about 12x: a first try at 600 req/s left the client and the balancer
#: CPU-starved on this machine (p50 480 ms on ten idle-capacity replicas), which measures
#: the machine, not the pool. The replicas' long service time keeps them the bottleneck.
#: (start s, end s, rate at start, rate at end): a step, a ramp, a plateau, a step down.
PROFILE: Profile = (
    (0.0, 10.0, 20.0, 20.0),
    (10.0, 35.0, 120.0, 120.0),
    (35.0, 45.0, 120.0, 240.0),
    (45.0, 70.0, 240.0, 240.0),
    (70.0, 90.0, 40.0, 40.0),
)
CLIENT_TIMEOUT = 10.0
#: Most requests in flight from the client: above peak rate x timeout (240 x 10), so the
#: load stays open-loop even against the fixed pool of 1, whose backlog runs to thousands.
CLIENT_CONCURRENCY = 2500
SAMPLE_EVERY = 0.5
#: The metric lines the sampler keeps, by the name it stores them under.
METRICS = {
    'lbproxy_replicas{state="up"}': "ready",
    "lbproxy_pool_target": "actual",
    "lbproxy_autoscale_desired_replicas": "desired",
    'lbproxy_autoscale_observed_concurrency{window="stable"}': "stable",
    # The replicas' FIFO queues (--max-conns-per-replica): requests that waited, those
    # moved to another replica's queue when the ring changed, those answered 503.
    "lbproxy_queued_total": "queued",
    "lbproxy_queue_redispatched_total": "redispatched",
    "lbproxy_queue_timeouts_total": "queue_timeouts",
}
#: The counters above, reported as their value at the end of a scenario.
QUEUE_COUNTERS = ("queued", "redispatched", "queue_timeouts")


@dataclass
class Options:
    out: Path = Path("docs/analysis")
    quick: bool = False  # every phase halved, one cold start: a smoke run
    cold_starts: int = 3
    command: str = "lbproxy analyze --only a5"

    @property
    def scale(self) -> float:
        return 0.5 if self.quick else 1.0

    def profile(self) -> list[tuple[float, float, float, float]]:
        k = self.scale
        return [(a * k, b * k, r0, r1) for a, b, r0, r1 in PROFILE]


@dataclass
class Run:
    """One scenario: what the client saw, what the balancer reported, both against t = 0."""

    name: str
    args: list[str]
    t0: float = 0.0  # wall clock of t = 0 (the schedule's start)
    sent: list[float] = field(default_factory=list)  # scheduled offsets, s
    latency: list[float] = field(default_factory=list)  # s, from the scheduled time
    ok: list[bool] = field(default_factory=list)
    outcome: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, float]] = field(default_factory=list)  # t: s since t0
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class A5:
    """The whole A-5 run: ``results`` (a5_autoscale.json) and the runs the chart needs."""

    options: Options
    results: dict[str, Any]
    runs: list[Run]


def log(message: str) -> None:
    print(f"lbproxy analyze: A-5: {message}", file=sys.stderr, flush=True)


def parse_metrics(text: str) -> dict[str, float]:
    """The few lines the sampler needs: pool sizes and in-flight per replica."""
    out: dict[str, float] = {"in_flight_sum": 0.0, "in_flight_max": 0.0}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, _, value = line.rpartition(" ")
        try:
            v = float(value)
        except ValueError:
            continue
        if name.startswith("lbproxy_replica_in_flight{"):
            out["in_flight_sum"] += v
            out["in_flight_max"] = max(out["in_flight_max"], v)
        elif name in METRICS:
            out[METRICS[name]] = v
    return out


async def drive(url: str, run: Run, prof: Profile) -> None:
    """The open-loop load (``run_load(schedule=...)``) and the metrics sampler beside it."""
    times = schedule_of(prof)
    end = prof[-1][1]
    done = asyncio.Event()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:

        async def sampler() -> None:
            while not done.is_set():
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with session.get(url + "/lbproxy/metrics") as resp:
                        sample = parse_metrics(await resp.text())
                    sample["wall"] = time.time()
                    run.samples.append(sample)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), SAMPLE_EVERY)

        sampling = asyncio.create_task(sampler())
        try:
            result: LoadResult = await asyncio.wait_for(
                run_load(
                    url,
                    requests=len(times),
                    concurrency=CLIENT_CONCURRENCY,
                    ids=make_ids("sequential", len(times)),
                    timeout=CLIENT_TIMEOUT,
                    schedule=times,
                    record=True,
                ),
                # Every request ends by its own deadline; this bound only guards a wedged run.
                timeout=end + CLIENT_TIMEOUT + 15,
            )
        finally:
            done.set()
            await sampling
        # One last sample after the load: the counters' totals for the whole scenario.
        async with session.get(url + "/lbproxy/metrics") as resp:
            sample = parse_metrics(await resp.text())
        sample["wall"] = time.time()
        run.samples.append(sample)
        async with session.get(url + "/lbproxy/events") as resp:
            run.events = (await resp.json())["message"]
    run.t0 = result.started_at
    for s in sorted(result.samples, key=lambda s: s.index):
        run.sent.append(times[s.index])
        run.latency.append(s.latency)
        run.ok.append(s.outcome == "ok")
        run.outcome[s.outcome] = run.outcome.get(s.outcome, 0) + 1
    run.outcome["unfinished"] = len(times) - result.completed
    for sample in run.samples:
        sample["t"] = sample.pop("wall") - run.t0


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (as ``LatencySummary``); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def window(run: Run, a: float, b: float) -> dict[str, float]:
    """Requests scheduled in [a, b): how many, how many failed, p50/p99 latency (ms)."""
    lat = [x for s, x in zip(run.sent, run.latency, strict=True) if a <= s < b]
    failed = sum(1 for s, ok in zip(run.sent, run.ok, strict=True) if a <= s < b and not ok)
    return {
        "requests": len(lat),
        "failed": failed,
        "p50_ms": pct(lat, 50) * 1000,
        "p99_ms": pct(lat, 99) * 1000,
    }


def scale_events(run: Run) -> list[tuple[float, str]]:
    """(seconds since t0, detail) of the autoscaler's events."""
    return [(e["time"] - run.t0, e["detail"]) for e in run.events if e["kind"] == "autoscale"]


def desired_of(detail: str) -> int | None:
    if detail.startswith("desired="):
        return int(detail.split()[0].split("=")[1])
    return None


def analyse(run: Run, prof: Profile, scale: float = 1.0) -> dict[str, Any]:
    """One scenario's figures: per phase, the settled plateau, and the autoscaler's timing."""
    end = prof[-1][1]
    result: dict[str, Any] = {
        "name": run.name,
        "args": run.args,
        "total": window(run, 0, end),
        "outcomes": run.outcome,
        "phases": [
            {"from_s": a, "to_s": b, "rate": [r0, r1], **window(run, a, b)} for a, b, r0, r1 in prof
        ],
    }
    plateau_a, plateau_b = prof[3][0], prof[3][1]
    # Settled: the second half of the plateau, after any scale-up has landed.
    result["settled_peak"] = window(run, (plateau_a + plateau_b) / 2, plateau_b)
    events = scale_events(run)
    if events:
        step = prof[1][0]
        before = [desired_of(d) for t, d in events if t < step and desired_of(d) is not None]
        level = before[-1] if before else MIN
        ups = [(t, d) for t, d in events if t >= step and (desired_of(d) or 0) > (level or 0)]
        result["step_decision_s"] = ups[0][0] - step if ups else None
        served = [t for t, d in events if t >= step and d.startswith("scaled up")]
        result["step_serving_s"] = served[0] - step if served else None
        changes = [t for t, d in events if d.startswith("scaled ")]
        result["scale_changes"] = len(changes)
        # Constant-load stretches, after one stable window to settle in each.
        settle = 20.0 * scale
        constant = []
        for a, b, r0, r1 in prof:
            if r0 == r1 and b - a > settle:
                n = sum(1 for t in changes if a + settle <= t < b)
                constant.append({"from_s": a + settle, "to_s": b, "rate": r0, "changes": n})
        result["changes_in_constant_load"] = constant
        result["events"] = events
    ready = [(s["t"], s.get("ready", 0.0)) for s in run.samples]
    result["ready_at"] = {
        str(n): next((t for t, r in ready if r >= n), None) for n in (2, 4, 8, MAX)
    }
    result["max_desired"] = max((s.get("desired", 0.0) for s in run.samples), default=None)
    last = run.samples[-1] if run.samples else {}
    result["queue"] = {key: int(last[key]) for key in QUEUE_COUNTERS if key in last}
    return result


@contextlib.contextmanager
def _balancer(replicas: int, *extra: str) -> Iterator[str]:
    from lbproxy_tools.launcher import run_balancer

    env = {"SERVER_DELAY_MS": str(DELAY_MS), "SERVER_CONCURRENCY": str(CONCURRENCY)}
    with run_balancer(
        *extra, replicas=replicas, env=env, fast_heartbeat=False, up_timeout=60
    ) as lb:
        yield lb.url


async def cold_starts(repeats: int) -> list[dict[str, float]]:
    """Scale to zero, then time one request that finds the pool empty; ``repeats`` times."""
    args = (
        "--autoscale",
        "0:4",
        "--target-concurrency",
        str(TARGET),
        "--autoscale-stable-window",
        "3",
        "--autoscale-panic-window",
        "1",
        "--autoscale-scale-down-delay",
        "3",
    )
    out: list[dict[str, float]] = []
    with _balancer(1, *args) as url:
        async with aiohttp.ClientSession() as session:
            for _ in range(repeats):
                while True:  # wait for zero (idle for the 3 s stable window)
                    async with session.get(url + "/rep") as r:
                        if (await r.json())["message"]["N"] == 0:
                            break
                    await asyncio.sleep(0.2)
                wall = time.time()
                started = time.perf_counter()
                async with session.get(url + "/home") as r:
                    await r.read()
                    status = r.status
                client_ms = (time.perf_counter() - started) * 1000
                async with session.get(url + "/lbproxy/events") as r:
                    events = [e for e in (await r.json())["message"] if e["time"] >= wall]

                def at(
                    kind: str, events: list[dict[str, Any]] = events, wall: float = wall
                ) -> float:
                    """ms from the request to the first event of ``kind`` after it."""
                    times = [e["time"] for e in events if e["kind"] == kind]
                    return (times[0] - wall) * 1000 if times else math.nan

                cold = [e for e in events if e["kind"] == "cold_start"]
                held_ms = (
                    float(cold[-1]["detail"].split("waited ")[1].split()[0]) if cold else math.nan
                )
                row = {
                    "status": status,
                    "client_ms": client_ms,
                    "held_ms": held_ms,
                    "decision_ms": at("autoscale"),
                    "launched_ms": at("launched"),
                    "up_ms": at("up"),
                }
                out.append(row)
                log("cold start: " + ", ".join(f"{k} {v:.0f}" for k, v in row.items()))
    return out


#: The checkout this module runs from: its commit is recorded next to the figures.
CHECKOUT = Path(__file__).resolve().parents[2]


def scenarios() -> list[tuple[str, int, list[str]]]:
    """(name, starting replicas, extra serve flags): autoscaled, then fixed MAX and MIN."""
    return [
        ("autoscaled", MIN, ["--autoscale", f"{MIN}:{MAX}", "--target-concurrency", str(TARGET)]),
        (f"fixed {MAX}", MAX, []),
        (f"fixed {MIN}", MIN, []),
    ]


async def run_a5(opts: Options) -> A5:
    """Every scenario back to back, then the cold starts; the figures and the raw runs."""
    prof = opts.profile()
    results: dict[str, Any] = {
        "command": opts.command,
        "revision": checkout_revision(CHECKOUT),
        "started": time.time(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "load_start": round(os.getloadavg()[0], 1),
        },
        "replica": {"delay_ms": DELAY_MS, "concurrency": CONCURRENCY},
        "autoscale": {"min": MIN, "max": MAX, "target": TARGET},
        "client": {"timeout_s": CLIENT_TIMEOUT, "max_in_flight": CLIENT_CONCURRENCY},
        "profile": prof,
        "quick": opts.quick,
    }
    runs: list[Run] = []
    for name, replicas, extra in scenarios():
        with _balancer(replicas, *extra) as url:
            run = Run(name, extra)
            log(f"{name}: {len(schedule_of(prof))} requests over {prof[-1][1]:g} s")
            await drive(url, run, prof)
        runs.append(run)
        summary = analyse(run, prof, opts.scale)
        log(
            f"{name}: {summary['total']['failed']} of {summary['total']['requests']} failed; "
            f"settled p99 {summary['settled_peak']['p99_ms']:.0f} ms"
        )
    results["runs"] = [analyse(run, prof, opts.scale) for run in runs]
    results["cold_starts"] = await cold_starts(1 if opts.quick else opts.cold_starts)
    results["machine"]["load_end"] = round(os.getloadavg()[0], 1)
    results["duration_s"] = time.time() - results["started"]
    return A5(opts, results, runs)


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the report quotes, by scenario, plus the cold-start medians."""
    out: dict[str, Any] = {}
    for r in results["runs"]:
        out[r["name"]] = {
            key: r.get(key)
            for key in (
                "total",
                "settled_peak",
                "step_decision_s",
                "step_serving_s",
                "scale_changes",
                "changes_in_constant_load",
                "queue",
            )
        }
    colds = results.get("cold_starts") or []
    for key in ("client_ms", "held_ms", "up_ms"):
        values = [c[key] for c in colds if not math.isnan(c[key])]
        out[f"cold_start_{key}_median"] = statistics.median(values) if values else None
    return out
