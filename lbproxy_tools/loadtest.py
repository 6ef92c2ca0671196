"""``lbproxy loadtest``: an asyncio HTTP load client for the balancer (and anything HTTP).

One ``aiohttp.ClientSession`` (keep-alive, connector limit = concurrency, no cookie jar)
and a fixed pool of ``concurrency`` worker tasks that pull request indices from one shared
iterator: no task, timeout object or id string is created per request, so the client stays
far from being the bottleneck (docs/analysis/loadtest.md has its measured rate).

Each request carries ``X-Request-ID`` (the balancer's routing key): random 6-digit ids
from ``random.Random(seed)`` by default, sequential ids from 100000, or ids read from a
file, one per line (cycled when the file has fewer ids than requests). The replica that
served a response is read from the ``/home`` body (``"Hello from Server: <name>"``), or
from a response header naming it when the body does not.

``run_load`` is the engine; ``lbproxy analyze`` and the tests call it directly. It runs
closed-loop (each worker sends its next request when the last one is answered), paced
(``rate``: request i goes at i / rate) or open-loop on a schedule (``schedule``: request i
goes at its own offset whatever the answers do, and its latency and its deadline count
from that scheduled time, so a slow server cannot slow the client down and hide its own
latency: no coordinated omission). A-5's stepped and ramped load is such a schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from lbproxy.argtypes import positive_float, positive_int

__all__ = [
    "LatencySummary",
    "LoadResult",
    "Sample",
    "add_parser",
    "make_ids",
    "replica_of",
    "run_load",
    "schedule_of",
]

REQUEST_ID = "X-Request-ID"
HELLO = "Hello from Server: "
#: First id of ``--ids sequential`` (the smallest 6-digit number).
SEQUENTIAL_START = 100000
#: Headers a balancer may use to name the replica that answered (checked in this order).
REPLICA_HEADERS = ("X-Served-By", "X-Replica", "X-Upstream-Server", "X-Backend-Server")
#: Distinct response bodies remembered with the replica they name (a /home body per replica).
_BODY_CACHE_LIMIT = 4096
#: Exceptions that mean "this request failed" rather than "the client is broken".
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latency of completed requests (errors included), in milliseconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencySummary:
        if not seconds:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0)
        ordered = sorted(seconds)
        n = len(ordered)

        def pct(p: float) -> float:
            # nearest rank: the smallest value with at least p% of the samples at or below it
            return ordered[max(0, math.ceil(p / 100 * n) - 1)] * 1000

        return cls(n, sum(ordered) / n * 1000, pct(50), pct(90), pct(99), ordered[-1] * 1000)


@dataclass(frozen=True, slots=True)
class Sample:
    """One request, kept only with ``record=True``: when it was sent and what came back."""

    sent: float  # wall-clock time.time() when it was sent (scheduled, with ``schedule``)
    latency: float  # seconds (from the scheduled time, with ``schedule``)
    outcome: str  # "ok", an HTTP status ("502") or an exception class name
    replica: str | None
    index: int = -1  # its place in ``ids`` (and in ``schedule``)


@dataclass
class LoadResult:
    url: str
    requests: int  # planned
    completed: int  # sent and answered or failed (fewer than planned only when stopped)
    concurrency: int
    per_replica: dict[str, int]
    errors: dict[str, int]
    unattributed: int  # 2xx responses that named no replica (body or header)
    latency: LatencySummary
    duration: float  # seconds, first request sent to last one done
    rps: float
    started_at: float  # wall clock
    seed: int | None = None
    samples: list[Sample] = field(default_factory=list, repr=False)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def ok(self) -> int:
        return self.completed - self.failed

    def to_dict(self) -> dict[str, Any]:
        lat = self.latency
        return {
            "url": self.url,
            "requests": self.requests,
            "completed": self.completed,
            "ok": self.ok,
            "failed": self.failed,
            "concurrency": self.concurrency,
            "seed": self.seed,
            "duration_s": round(self.duration, 6),
            "rps": round(self.rps, 3),
            "per_replica": dict(sorted(self.per_replica.items())),
            "unattributed": self.unattributed,
            "errors": dict(sorted(self.errors.items())),
            "latency_ms": {
                "count": lat.count,
                "mean": round(lat.mean, 3),
                "p50": round(lat.p50, 3),
                "p90": round(lat.p90, 3),
                "p99": round(lat.p99, 3),
                "max": round(lat.max, 3),
            },
        }


def make_ids(kind: str, requests: int, seed: int | None = None) -> list[str]:
    """Request ids: ``random`` (seeded 6-digit), ``sequential`` (100000, ...) or a file path."""
    if kind == "random":
        rng = random.Random(seed)
        return [str(rng.randint(100000, 999999)) for _ in range(requests)]
    if kind == "sequential":
        return [str(SEQUENTIAL_START + k) for k in range(requests)]
    path = Path(kind)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(
            f"--ids {kind!r}: not 'random' or 'sequential', and not a readable file ({exc})"
        ) from exc
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"--ids {kind!r}: the file holds no ids (one per line)")
    return ids


Profile = Sequence[tuple[float, float, float, float]]


def rate_at(t: float, profile: Profile) -> float:
    """The offered rate (req/s) at ``t`` s of a profile of (start s, end s, rate at start,
    rate at end) phases, linear within each phase: a step is two phases, a ramp one."""
    for a, b, r0, r1 in profile:
        if a <= t < b:
            return r0 + (r1 - r0) * (t - a) / (b - a)
    return 0.0


def schedule_of(profile: Profile, step: float = 0.001) -> list[float]:
    """Send offsets (s) for ``run_load(schedule=...)``: request i goes when the integral of
    the profile's rate reaches i (so a phase at R req/s for T s sends about R x T)."""
    times: list[float] = []
    t, acc = 0.0, 0.0
    end = profile[-1][1] if profile else 0.0
    while t < end:
        acc += rate_at(t, profile) * step
        while acc >= 1.0:
            times.append(t)
            acc -= 1.0
        t += step
    return times


def _name_in_body(body: bytes) -> str | None:
    if body.startswith(b"{"):
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(body).get("message")
            if isinstance(message, str) and message.startswith(HELLO):
                return message[len(HELLO) :]
    return None


def replica_of(body: bytes, headers: Mapping[str, str] | None = None) -> str | None:
    """The replica a response names: the ``/home`` body's message, else a header."""
    name = _name_in_body(body)
    if name is not None:
        return name
    if headers is not None:
        for name in REPLICA_HEADERS:
            value = headers.get(name)
            if value:
                return value
    return None


@dataclass
class Meter:
    """Live counts of a running load: for the progress bar, and for a caller that acts once
    the load flows (a test that kills a replica after N answers) instead of sleeping."""

    done: int = 0
    failed: int = 0


class _Progress:
    """A tqdm bar on stderr refreshed ten times a second from the counters (no per-request cost)."""

    def __init__(self, total: int, meter: Meter) -> None:
        from tqdm import tqdm

        self._meter = meter
        self._bar = tqdm(
            total=total, unit="req", file=sys.stderr, dynamic_ncols=True, leave=True, smoothing=0.1
        )
        self._task: asyncio.Task[None] | None = None

    def _refresh(self) -> None:
        done, failed = self._meter.done, self._meter.failed
        self._bar.update(done - self._bar.n)
        self._bar.set_postfix_str(f"errors={failed}", refresh=False)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self._refresh()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._refresh()
        self._bar.close()


async def run_load(
    url: str,
    *,
    requests: int,
    concurrency: int,
    ids: Sequence[str],
    path: str = "/home",
    timeout: float = 10.0,
    progress: bool = False,
    rate: float | None = None,
    stop: asyncio.Event | None = None,
    record: bool = False,
    seed: int | None = None,
    meter: Meter | None = None,
    schedule: Sequence[float] | None = None,
) -> LoadResult:
    """Send ``requests`` GETs to ``url + path`` from ``concurrency`` workers; count outcomes.

    ``ids`` are the X-Request-ID values, used in order and cycled if fewer than
    ``requests``. ``rate`` (req/s) paces the sends instead of going flat out; ``stop``
    ends the run early when set; ``record`` keeps a ``Sample`` per request (for timelines).
    ``meter`` counts requests done and failed while the run goes on (a caller that acts
    mid-run waits on it). ``seed`` is only reported back. Requests that fail count in
    ``errors`` by kind: the HTTP status for a non-2xx answer, the exception class name for
    a transport error.

    ``schedule`` (open loop; sorted offsets in seconds from the start, one per request, so
    ``requests`` must equal its length): request i is sent at its offset by whichever of the
    ``concurrency`` workers is free; its latency counts from the offset, and it fails as
    ``TimeoutError`` once ``timeout`` has passed since the offset (without being sent when
    no worker was free in time). ``concurrency`` is then the most requests in flight:
    size it above rate x timeout to keep the load open-loop under a stalled server.
    """
    if requests < 0:
        raise ValueError(f"requests must not be negative, got {requests}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if not ids:
        raise ValueError("ids must not be empty")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if schedule is not None:
        if rate is not None:
            raise ValueError("rate and schedule are exclusive")
        if len(schedule) != requests:
            raise ValueError(f"schedule has {len(schedule)} offsets for {requests} requests")
    target = url.rstrip("/") + (path if path.startswith("/") else "/" + path)
    n_ids = len(ids)
    per_replica: dict[str, int] = {}
    errors: dict[str, int] = {}
    latencies: list[float] = []
    samples: list[Sample] = []
    names: dict[bytes, str] = {}  # body -> replica: each replica's /home body is constant
    meter = meter if meter is not None else Meter()
    unattributed = 0
    indices: Iterator[int] = iter(range(requests))
    loop = asyncio.get_running_loop()
    perf = time.perf_counter
    wall = time.time

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal unattributed
        for i in indices:
            if stop is not None and stop.is_set():
                return
            due: float | None = None  # perf_counter time it is scheduled for (open loop)
            budget: aiohttp.ClientTimeout | None = None
            if rate is not None:
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                    if stop is not None and stop.is_set():
                        return
            elif schedule is not None:
                due = started_perf + schedule[i]
                delay = due - perf()
                if delay > 0:
                    await asyncio.sleep(delay)
                    if stop is not None and stop.is_set():
                        return
                # The deadline counts from the scheduled time, not from when a worker was free.
                budget = aiohttp.ClientTimeout(total=due + timeout - perf())
            headers = {REQUEST_ID: ids[i % n_ids]}
            replica: str | None = None
            sent = perf() if due is None else due
            try:
                if budget is not None and budget.total is not None and budget.total <= 0:
                    raise TimeoutError("no worker was free before the request's deadline")
                request = (
                    session.get(target, headers=headers)
                    if budget is None
                    else session.get(target, headers=headers, timeout=budget)
                )
                async with request as resp:
                    body = await resp.read()
                    status = resp.status
                    if 200 <= status < 300:
                        outcome = "ok"
                        replica = names.get(body)
                        if replica is None:
                            replica = _name_in_body(body)
                            if replica is None:
                                replica = replica_of(b"", resp.headers)
                            elif len(names) < _BODY_CACHE_LIMIT:
                                names[body] = replica
                    else:
                        outcome = str(status)
            except TRANSPORT_ERRORS as exc:
                outcome = type(exc).__name__
            elapsed = perf() - sent
            latencies.append(elapsed)
            meter.done += 1
            if outcome == "ok":
                if replica is None:
                    unattributed += 1
                else:
                    per_replica[replica] = per_replica.get(replica, 0) + 1
            else:
                meter.failed += 1
                errors[outcome] = errors.get(outcome, 0) + 1
            if record:
                samples.append(
                    Sample(started_wall + (sent - started_perf), elapsed, outcome, replica, i)
                )

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, ttl_dns_cache=None)
    bar = _Progress(requests, meter) if progress else None
    async with aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as session:
        if bar is not None:
            bar.start()
        start = loop.time()
        started_wall, started_perf = wall(), perf()
        try:
            await asyncio.gather(*(worker(session) for _ in range(min(concurrency, requests))))
        finally:
            duration = perf() - started_perf
            if bar is not None:
                await bar.close()
    done = meter.done
    return LoadResult(
        url=target,
        requests=requests,
        completed=done,
        concurrency=concurrency,
        per_replica=per_replica,
        errors=errors,
        unattributed=unattributed,
        latency=LatencySummary.of(latencies),
        duration=duration,
        rps=done / duration if duration > 0 else 0.0,
        started_at=started_wall,
        seed=seed,
        samples=samples,
    )


# -- the command ------------------------------------------------------------------------


def format_table(result: LoadResult) -> str:
    """The human-readable report printed on stdout."""
    lat = result.latency
    lines = [
        f"lbproxy loadtest: {result.url}",
        f"  requests     {result.completed} of {result.requests} completed, "
        f"concurrency {result.concurrency}"
        + (f", seed {result.seed}" if result.seed is not None else ""),
        f"  duration     {result.duration:.3f} s",
        f"  throughput   {result.rps:.1f} req/s",
        f"  latency ms   p50 {lat.p50:.2f}   p90 {lat.p90:.2f}   p99 {lat.p99:.2f}   "
        f"max {lat.max:.2f}   mean {lat.mean:.2f}",
        "",
    ]
    ok = result.ok
    width = max([len("replica"), *(len(n) for n in result.per_replica)])
    lines.append(f"  {'replica':<{width}}  {'requests':>9}  {'share':>7}")
    for name, count in sorted(result.per_replica.items()):
        share = count / ok * 100 if ok else 0.0
        lines.append(f"  {name:<{width}}  {count:>9}  {share:>6.2f}%")
    if result.unattributed:
        lines.append(f"  {'(unnamed)':<{width}}  {result.unattributed:>9}")
    lines.append("")
    if result.errors:
        lines.append(f"  errors       {result.failed} of {result.completed}")
        for kind, count in sorted(result.errors.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {kind:<24} {count:>9}")
    else:
        lines.append("  errors       none")
    return "\n".join(lines)


def _option(parser: Any, flag: str, *, help: str, **kwargs: Any) -> None:
    """An option that also reads ``LBPROXY_*`` when the parser supports it (lbproxy's does)."""
    if hasattr(parser, "env_option"):
        parser.env_option(flag, help=help, **kwargs)
    else:
        parser.add_argument(flag, help=help + " [default %(default)s]", **kwargs)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "loadtest",
        help="send a burst of requests and report per-replica counts, throughput, latency",
        description=(
            "Send REQUESTS GETs to URL+PATH from CONCURRENCY connections, each with an "
            "X-Request-ID, and report requests per replica, throughput, latency percentiles "
            "and errors by kind. Exits 1 when any request failed."
        ),
    )
    _option(p, "--url", default="http://127.0.0.1:5000", help="balancer base URL")
    p.add_argument(
        "--requests", type=positive_int, default=10000, help="requests to send [%(default)s]"
    )
    p.add_argument(
        "--concurrency",
        type=positive_int,
        default=100,
        help="connections and worker tasks [%(default)s]",
    )
    p.add_argument("--path", default="/home", help="request path [%(default)s]")
    p.add_argument(
        "--ids",
        default="random",
        help="X-Request-ID values: random (6-digit, seeded), sequential (100000..) "
        "or a FILE with one id per line [%(default)s]",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the random ids (default: a fresh one, printed so the run can be repeated)",
    )
    p.add_argument(
        "--rate",
        type=positive_float,
        default=None,
        help="pace to this many req/s (default: flat out)",
    )
    p.add_argument(
        "--timeout", type=positive_float, default=10.0, help="seconds per request [%(default)s]"
    )
    p.add_argument(
        "--json", metavar="OUT", help="also write the figures as JSON to OUT ('-' = stdout)"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    seed = args.seed
    if args.ids == "random" and seed is None:
        seed = random.SystemRandom().randrange(2**31)
    try:
        ids = make_ids(args.ids, args.requests, seed)
    except ValueError as exc:
        print(f"lbproxy loadtest: {exc}", file=sys.stderr)
        return 2
    progress = not args.quiet and sys.stderr.isatty()
    from lbproxy.cli import new_event_loop

    loop = new_event_loop("auto")
    try:
        result = loop.run_until_complete(
            run_load(
                args.url,
                requests=args.requests,
                concurrency=args.concurrency,
                ids=ids,
                path=args.path,
                timeout=args.timeout,
                progress=progress,
                rate=args.rate,
                seed=seed if args.ids == "random" else None,
            )
        )
    except KeyboardInterrupt:
        return 130
    finally:
        loop.close()
    if args.json != "-":
        print(format_table(result))
    if args.json:
        text = json.dumps(result.to_dict(), indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 1 if result.failed else 0
