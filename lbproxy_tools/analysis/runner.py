"""SPEC Task 4 against real balancers, over HTTP only: measurements in, ``Analysis`` out.

By default every hash family under test gets its own ``lbproxy serve`` on the process
backend (``lbproxy_tools.launcher.run_balancer``), started with the smallest N and grown one
replica at a time with ``POST /add {"n": 1}``: the generated names (``Server 1``, ...) and
ring ids (1, 2, ...) are then the same on every run, so a fixed seed gives fixed counts.
With ``url`` set, one existing deployment is driven through the same admin API instead.

Load is sent by ``lbproxy_tools.loadtest.run_load``, the same engine as ``lbproxy loadtest``;
who served a request is read from the replica's ``/home`` body, and cross-checked against
the balancer's own ``served`` counters from ``/lbproxy/status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from lbproxy_tools.loadtest import LoadResult, make_ids, run_load

#: Event kinds of a replacement, in the order the timeline shows them.
TIMELINE_KINDS = (
    "died",
    "heartbeat_down",
    "removed_from_ring",
    "replacing",
    "launched",
    "up",
    "first_response",
)
#: The milestones of the kill drill: label -> the event kinds that mark it (first one wins).
MILESTONES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("detected", ("died", "heartbeat_down")),
    ("removed from ring", ("removed_from_ring",)),
    ("replacement launched", ("launched",)),
    ("replacement up", ("up",)),
    ("replacement first response", ("first_response",)),
)


class AnalysisError(Exception):
    """The balancer did something the analysis cannot work around (reported, exit 1)."""


@dataclass
class Options:
    out: Path = Path("docs/analysis")
    requests: int = 10000
    seed: int = 42
    families: list[str] = field(default_factory=lambda: ["maglev", "seed", "seed-alt"])
    min_n: int = 2
    max_n: int = 6
    concurrency: int = 100
    url: str | None = None
    admin_url: str | None = None
    kill_cmd: str | None = None
    kill_rate: float = 400.0
    kill_concurrency: int = 20
    recovery_timeout: float = 20.0
    admin_token: str | None = None
    progress: bool = False
    command: str = "lbproxy analyze"

    def ns(self) -> list[int]:
        """Every N measured: the A-2 range, plus N=3 for A-1 when outside it."""
        return sorted(set(range(self.min_n, self.max_n + 1)) | {3})


@dataclass
class Point:
    """One family at one N: who served the ``requests`` requests."""

    family: str
    n: int
    replicas: list[str]
    counts: dict[str, int]  # from the response bodies, every replica listed (0 if none)
    served: dict[str, int]  # the balancer's own served counters over the same run
    shares: dict[str, float]  # the key-space fraction the balancer's ring gives each
    errors: dict[str, int]
    unattributed: int
    rps: float
    duration: float
    p50_ms: float
    p99_ms: float

    @property
    def values(self) -> list[int]:
        return [self.counts[name] for name in self.replicas]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def std(self) -> float:
        return statistics.pstdev(self.values)

    @property
    def min(self) -> int:
        return min(self.values)

    @property
    def max(self) -> int:
        return max(self.values)

    @property
    def imbalance(self) -> float:
        """Busiest replica over the mean: 1.0 is a perfect spread, N is one replica doing all."""
        return self.max / self.mean if self.mean else 0.0

    @property
    def counters_agree(self) -> bool:
        return self.served == self.counts

    @property
    def chi2(self) -> float:
        """Pearson's chi-square of the counts against the ring's shares x requests."""
        total = sum(self.values)
        out = 0.0
        for name in self.replicas:
            expected = self.shares.get(name, 0.0) * total
            if expected > 0:
                out += (self.counts[name] - expected) ** 2 / expected
        return out

    @property
    def p_value(self) -> float:
        """How likely random ids spread over the ring's shares deviate at least this much."""
        return chi2_sf(self.chi2, max(1, len(self.replicas) - 1))


def chi2_sf(x: float, k: int) -> float:
    """The chi-square survival function P(X >= x) for ``k`` (integer) degrees of freedom."""
    if x <= 0:
        return 1.0
    half = x / 2
    if k % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, k // 2):
            term *= half / i
            total += term
        return min(1.0, math.exp(-half) * total)
    total = math.erfc(math.sqrt(half))
    term = math.sqrt(half) / math.gamma(1.5)
    for i in range(1, (k + 1) // 2):
        total += math.exp(-half) * term
        term *= half / (i + 0.5)
    return min(1.0, total)


@dataclass
class Exchange:
    """One admin or proxied call of the endpoint tour, as sent and as answered."""

    title: str
    method: str
    path: str
    body: str | None
    headers: dict[str, str]
    status: int
    response: str
    response_headers: dict[str, str]


@dataclass
class TimelineEvent:
    seq: int
    kind: str
    replica: str
    detail: str
    ms: float  # since the kill


@dataclass
class KillDrill:
    performed: bool
    note: str
    family: str = ""
    victim: str = ""
    victim_id: str = ""
    kill_time: float = 0.0
    kill_method: str = ""
    rate: float = 0.0
    concurrency: int = 0
    events: list[TimelineEvent] = field(default_factory=list)
    milestones: dict[str, float | None] = field(default_factory=dict)
    sent: int = 0
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    failed_in_window: int = 0  # kill .. replacement's first response
    sent_in_window: int = 0
    phases: dict[str, dict[str, int]] = field(default_factory=dict)
    # for the chart: (sent, ms since the kill; latency ms; outcome; replica) per request
    requests: list[tuple[float, float, str, str | None]] = field(default_factory=list)
    latency_before_ms: float = 0.0  # p99 of requests sent in the second before the kill
    latency_after_ms: float = 0.0  # max of requests sent in the kill .. first response window
    idle_launch_to_up_ms: list[float] = field(default_factory=list)  # launches before the drill
    replicas_after: list[str] = field(default_factory=list)
    new_id: str = ""


@dataclass
class Analysis:
    options: Options
    mode: str  # "launched" (own balancers) or "url"
    started: float
    finished: float = 0.0
    points: list[Point] = field(default_factory=list)
    endpoints: list[Exchange] = field(default_factory=list)
    kill: KillDrill = field(default_factory=lambda: KillDrill(False, "not run"))
    notes: list[str] = field(default_factory=list)
    default_family: str = ""
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def families(self) -> list[str]:
        seen: list[str] = []
        for p in self.points:
            if p.family not in seen:
                seen.append(p.family)
        return seen

    def point(self, family: str, n: int) -> Point | None:
        return next((p for p in self.points if p.family == family and p.n == n), None)

    def to_json(self) -> dict[str, Any]:
        def point(p: Point) -> dict[str, Any]:
            return {
                "family": p.family,
                "n": p.n,
                "replicas": p.replicas,
                "counts": p.counts,
                "served": p.served,
                "shares": p.shares,
                "errors": p.errors,
                "unattributed": p.unattributed,
                "mean": p.mean,
                "std": p.std,
                "min": p.min,
                "max": p.max,
                "imbalance": p.imbalance,
                "rps": p.rps,
                "duration_s": p.duration,
                "p50_ms": p.p50_ms,
                "p99_ms": p.p99_ms,
            }

        k = self.kill
        opts = self.options
        return {
            "command": opts.command,
            "mode": self.mode,
            "seed": opts.seed,
            "requests": opts.requests,
            "concurrency": opts.concurrency,
            "families": opts.families,
            "min_n": opts.min_n,
            "max_n": opts.max_n,
            "started": self.started,
            "duration_s": self.finished - self.started,
            "points": [point(p) for p in self.points],
            "endpoints": [e.__dict__ for e in self.endpoints],
            "kill": {key: value for key, value in k.__dict__.items() if key not in ("requests",)}
            | {"events": [e.__dict__ for e in k.events]},
            "notes": self.notes,
        }


def log(message: str) -> None:
    print(f"lbproxy analyze: {message}", file=sys.stderr, flush=True)


# -- talking to a balancer -----------------------------------------------------------------


#: Paths the balancer serves itself (on its admin listener when it has a separate one).
ADMIN_PATHS = ("/rep", "/add", "/rm")


class Admin:
    """The balancer's HTTP API, as any operator would call it.

    ``url`` is the public listener (the load goes there); ``admin_url`` the listener of
    ``/rep``, ``/add``, ``/rm`` and ``/lbproxy/*`` when ``lbproxy serve --admin-port`` split
    them off (the same as ``url`` otherwise).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        token: str | None,
        admin_url: str | None = None,
    ) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.admin_url = (admin_url or url).rstrip("/")
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}

    def base(self, path: str) -> str:
        admin = path.split("?")[0] in ADMIN_PATHS or path.startswith("/lbproxy/")
        return self.admin_url if admin else self.url

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: str | None = None,
        headers: dict[str, str] | None = None,
        title: str = "",
    ) -> Exchange:
        sent = dict(headers or {})
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method,
            self.base(path) + path,
            data=body.encode() if body is not None else None,
            headers={**self._auth, **sent},
            timeout=aiohttp.ClientTimeout(total=60),
        ) as resp:
            text = await resp.text()
            shown = {
                h: resp.headers[h] for h in ("Content-Type", "X-Request-ID") if h in resp.headers
            }
            return Exchange(title, method, path, body, sent, resp.status, text, shown)

    async def json(self, method: str, path: str, body: object | None = None) -> Any:
        text = json.dumps(body) if body is not None else None
        ex = await self.call(method, path, body=text)
        if ex.status != 200:
            raise AnalysisError(f"{method} {path} answered {ex.status}: {ex.response[:300]}")
        return json.loads(ex.response)["message"]

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.json("GET", "/lbproxy/status")
        return result

    async def names(self) -> list[str]:
        rep = await self.json("GET", "/rep")
        return list(rep["replicas"])

    async def events(self, since: int = 0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.json("GET", f"/lbproxy/events?since={since}")
        return result

    async def wait_all_up(self, n: int, timeout: float = 30.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = await self.status()
            states = [r["state"] for r in status["replicas"]]
            if len(states) == n and all(s == "up" for s in states):
                return status
            if loop.time() > deadline:
                raise AnalysisError(f"the pool did not settle at N={n} with every replica up")
            await asyncio.sleep(0.05)

    async def resize(self, n: int) -> None:
        """Grow with /add or shrink with /rm (generated names, highest ring id leaves first)."""
        current = len(await self.names())
        if n > current:
            await self.json("POST", "/add", {"n": n - current, "hostnames": []})
        elif n < current:
            await self.json("DELETE", "/rm", {"n": current - n, "hostnames": []})
        names = await self.names()
        if len(names) != n:
            raise AnalysisError(f"asked for N={n}, the balancer reports {names}")
        await self.wait_all_up(n)


def _served(status: dict[str, Any]) -> dict[str, int]:
    return {r["name"]: int(r["served"]) for r in status["replicas"]}


async def measure(admin: Admin, family: str, n: int, ids: list[str], opts: Options) -> Point:
    before = await admin.wait_all_up(n)
    names = [r["name"] for r in before["replicas"]]
    result: LoadResult = await run_load(
        admin.url,
        requests=opts.requests,
        concurrency=opts.concurrency,
        ids=ids,
        progress=opts.progress,
        seed=opts.seed,
    )
    after = await admin.status()
    served_before, served_after = _served(before), _served(after)
    served = {name: served_after.get(name, 0) - served_before.get(name, 0) for name in names}
    counts = {name: result.per_replica.get(name, 0) for name in names}
    strays = set(result.per_replica) - set(names)
    if strays:
        raise AnalysisError(f"responses named replicas outside the pool: {sorted(strays)}")
    point = Point(
        family=family,
        n=n,
        replicas=names,
        counts=counts,
        served=served,
        shares={k: float(v) for k, v in after.get("shares", {}).items()},
        errors=result.errors,
        unattributed=result.unattributed,
        rps=result.rps,
        duration=result.duration,
        p50_ms=result.latency.p50,
        p99_ms=result.latency.p99,
    )
    log(
        f"{family:<10} N={n}: {result.ok}/{result.completed} ok in {result.duration:.1f}s "
        f"({result.rps:.0f} req/s); per replica {point.values}"
        + (f"; errors {result.errors}" if result.errors else "")
    )
    return point


async def sweep(admin: Admin, family: str, opts: Options, ids: list[str]) -> list[Point]:
    points = []
    for n in opts.ns():
        await admin.resize(n)
        points.append(await measure(admin, family, n, ids, opts))
    return points


# -- the endpoint tour ------------------------------------------------------------------


async def endpoint_tour(admin: Admin) -> list[Exchange]:
    """Every endpoint once, with good and bad input; leaves the pool as it found it."""
    names = await admin.names()
    n0 = len(names)
    add = json.dumps({"n": 2, "hostnames": ["S5"]})
    rm = json.dumps({"n": 2, "hostnames": ["S5"]})
    calls: list[tuple[str, str, str, str | None, dict[str, str]]] = [
        ("the replicas", "GET", "/rep", None, {}),
        ("a request routed by its id", "GET", "/home", None, {"X-Request-ID": "123456"}),
        ("the same id again: the same replica", "GET", "/home", None, {"X-Request-ID": "123456"}),
        ("a replica's heartbeat, through the balancer", "GET", "/heartbeat", None, {}),
        ("add two replicas, one named", "POST", "/add", add, {}),
        ("remove the named one and one more", "DELETE", "/rm", rm, {}),
        ("an unknown path", "GET", "/other", None, {}),
        (
            "/add with more hostnames than n",
            "POST",
            "/add",
            json.dumps({"n": 1, "hostnames": ["S7", "S8"]}),
            {},
        ),
        (
            "/rm with more hostnames than n",
            "DELETE",
            "/rm",
            json.dumps({"n": 1, "hostnames": ["S7", "S8"]}),
            {},
        ),
        ("/add with a body that is not JSON", "POST", "/add", "n=2", {}),
        ("/add with a non-integer n", "POST", "/add", json.dumps({"n": "two"}), {}),
        (
            "/rm of a replica that does not exist",
            "DELETE",
            "/rm",
            '{"n": 1, "hostnames": ["S9"]}',
            {},
        ),
        ("the replicas again", "GET", "/rep", None, {}),
    ]
    out = []
    for title, method, path, body, headers in calls:
        out.append(await admin.call(method, path, body=body, headers=headers, title=title))
    if len(await admin.names()) != n0:
        raise AnalysisError("the endpoint tour did not leave the pool at its size")
    await admin.wait_all_up(n0)
    return out


# -- killing a replica under steady load ---------------------------------------------------


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _local_replica_pid(backend_id: str) -> int | None:
    """The pid, if ``backend_id`` is a live local ``server_app`` process (process backend)."""
    if not backend_id.isdigit():
        return None
    pid = int(backend_id)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except OSError:
        return None
    return pid if b"server_app" in cmdline else None


def _launch_to_up(events: list[dict[str, Any]]) -> list[float]:
    """Milliseconds from each ``launched`` to the same replica's next ``up``."""
    out: list[float] = []
    pending: dict[str, float] = {}
    for e in events:
        if e["kind"] == "launched":
            pending[e["replica"]] = float(e["time"])
        elif e["kind"] == "up" and e["replica"] in pending:
            out.append((float(e["time"]) - pending.pop(e["replica"])) * 1000)
    return out


Killer = Callable[[str, str], str]  # (name, backend_id) -> how it was killed


def sigkill_pid(name: str, backend_id: str) -> str:
    pid = _local_replica_pid(backend_id)
    if pid is None:
        raise AnalysisError(f"{name!r} (backend id {backend_id}) is not a local replica process")
    os.kill(pid, signal.SIGKILL)
    return f"SIGKILL to pid {pid}"


def command_killer(template: str) -> Killer:
    def kill(name: str, backend_id: str) -> str:
        argv = [
            word.format(name=name, backend_id=backend_id, id=backend_id)
            for word in shlex.split(template)
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise AnalysisError(f"{shlex.join(argv)} failed: {done.stderr.strip()[:300]}")
        return f"`{shlex.join(argv)}`"

    return kill


async def kill_drill(admin: Admin, opts: Options, killer: Killer, family: str) -> KillDrill:
    """SIGKILL one replica under a steady paced load; time the recovery from the events."""
    loop = asyncio.get_running_loop()
    status = await admin.wait_all_up(len(await admin.names()))
    replicas = status["replicas"]
    victim = replicas[1] if len(replicas) > 1 else replicas[0]
    name, backend_id = victim["name"], str(victim["backend_id"])
    history = await admin.events(0)
    cursor = max((int(e["seq"]) for e in history), default=0)
    idle = _launch_to_up(history)
    pre, post = 1.0, 1.0
    budget = pre + opts.recovery_timeout + post + 5
    planned = int(opts.kill_rate * budget)
    stop = asyncio.Event()
    load = asyncio.create_task(
        run_load(
            admin.url,
            requests=planned,
            concurrency=opts.kill_concurrency,
            ids=make_ids("random", planned, opts.seed + 1),
            rate=opts.kill_rate,
            stop=stop,
            record=True,
        )
    )
    try:
        await asyncio.sleep(pre)
        kill_time = time.time()
        how = killer(name, backend_id)
        log(f"A-3: killed {name!r} ({how}); waiting for its replacement to serve")
        deadline = loop.time() + opts.recovery_timeout
        served_again = False
        while loop.time() < deadline and not served_again:
            await asyncio.sleep(0.05)
            served_again = any(
                e["kind"] == "first_response" and e["replica"] == name and e["time"] >= kill_time
                for e in await admin.events(cursor)
            )
        await asyncio.sleep(post)
    finally:
        stop.set()
        result = await load
    raw_events = await admin.events(cursor)
    events = [
        TimelineEvent(
            int(e["seq"]), e["kind"], e["replica"], e["detail"], (e["time"] - kill_time) * 1000
        )
        for e in raw_events
        if e["replica"] == name and e["time"] >= kill_time
    ]
    milestones: dict[str, float | None] = {"killed": 0.0}
    for label, kinds in MILESTONES:
        milestones[label] = next((e.ms for e in events if e.kind in kinds), None)
    end_ms = milestones["replacement first response"]
    up_ms = milestones["replacement up"]
    kill_s = kill_time
    window_end = kill_s + (end_ms / 1000 if end_ms is not None else 1e9)
    in_window = [s for s in result.samples if kill_s <= s.sent <= window_end]
    up_s = kill_s + (up_ms / 1000 if up_ms is not None else 1e9)
    # Phases by the time each answer came back: a reply cannot predate what caused it.
    phases: dict[str, dict[str, int]] = {
        "answered before the kill": {},
        "answered between the kill and up": {},
        "answered after up": {},
    }
    for s in result.samples:
        done = s.sent + s.latency
        phase = (
            "answered before the kill"
            if done < kill_s
            else "answered between the kill and up"
            if done < up_s
            else "answered after up"
        )
        key = s.replica if s.outcome == "ok" and s.replica else f"failed: {s.outcome}"
        phases[phase][key] = phases[phase].get(key, 0) + 1
    before = sorted(s.latency for s in result.samples if kill_s - 1 <= s.sent < kill_s)
    after = await admin.wait_all_up(len(replicas), timeout=opts.recovery_timeout)
    new_id = next((str(r["backend_id"]) for r in after["replicas"] if r["name"] == name), "")
    drill = KillDrill(
        performed=True,
        note="" if served_again else "the replacement did not serve within the timeout",
        family=family,
        victim=name,
        victim_id=backend_id,
        kill_time=kill_time,
        kill_method=how,
        rate=opts.kill_rate,
        concurrency=opts.kill_concurrency,
        events=events,
        milestones=milestones,
        sent=result.completed,
        ok=result.ok,
        failed=result.failed,
        errors=result.errors,
        failed_in_window=sum(1 for s in in_window if s.outcome != "ok"),
        sent_in_window=len(in_window),
        phases=phases,
        requests=[
            ((s.sent - kill_s) * 1000, s.latency * 1000, s.outcome, s.replica)
            for s in result.samples
        ],
        latency_before_ms=before[max(0, math.ceil(0.99 * len(before)) - 1)] * 1000
        if before
        else 0.0,
        idle_launch_to_up_ms=idle,
        latency_after_ms=max((s.latency for s in in_window), default=0.0) * 1000,
        replicas_after=[r["name"] for r in after["replicas"]],
        new_id=new_id,
    )
    log(
        "A-3: "
        + ", ".join(f"{k} {v:.0f} ms" for k, v in milestones.items() if v is not None)
        + f"; {drill.failed} of {drill.sent} requests failed"
    )
    return drill


# -- the whole run ----------------------------------------------------------------------------


@contextlib.contextmanager
def _own_balancer(family: str | None, replicas: int) -> Iterator[str]:
    from lbproxy_tools.launcher import run_balancer

    extra = ("--hash", family) if family else ()
    with run_balancer(*extra, replicas=replicas) as lb:
        yield lb.url


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


async def run_analysis(opts: Options) -> Analysis:
    from lbproxy.ring import DEFAULT_FAMILY

    analysis = Analysis(opts, "url" if opts.url else "launched", time.time())
    analysis.environment = {
        "python": sys.version.split()[0],
        "cpus": str(os.cpu_count()),
        "platform": sys.platform,
        "load_start": f"{os.getloadavg()[0]:.1f}",
    }
    ids = make_ids("random", opts.requests, opts.seed)
    if opts.url is None:
        analysis.default_family = DEFAULT_FAMILY
        for family in opts.families:
            log(f"{family}: starting a balancer with {opts.ns()[0]} replicas")
            with _own_balancer(family, opts.ns()[0]) as url:
                async with _session() as session:
                    admin = Admin(session, url, None)
                    analysis.points += await sweep(admin, family, opts, ids)
        log(f"A-3: starting a balancer with 3 replicas ({DEFAULT_FAMILY}, the default family)")
        with _own_balancer(None, 3) as url:
            async with _session() as session:
                admin = Admin(session, url, None)
                analysis.endpoints = await endpoint_tour(admin)
                analysis.kill = await kill_drill(admin, opts, sigkill_pid, DEFAULT_FAMILY)
    else:
        async with _session() as session:
            admin = Admin(session, opts.url, opts.admin_token, opts.admin_url)
            status = await admin.status()
            family = str(status["family"])
            analysis.default_family = family
            original = len(status["replicas"])
            if opts.families != [family]:
                analysis.notes.append(
                    f"--url: the deployment runs the {family!r} family and a running balancer "
                    "cannot switch; only that family was measured"
                )
            try:
                analysis.points += await sweep(admin, family, opts, ids)
                await admin.resize(3)
                analysis.endpoints = await endpoint_tour(admin)
                killer: Killer | None = None
                if opts.kill_cmd:
                    killer = command_killer(opts.kill_cmd)
                elif _is_loopback(admin.admin_url) and all(
                    _local_replica_pid(str(r["backend_id"]))
                    for r in (await admin.status())["replicas"]
                ):
                    killer = sigkill_pid
                if killer is None:
                    analysis.kill = KillDrill(
                        False,
                        "the replicas are not local processes and no --kill-cmd was given "
                        "(e.g. --kill-cmd 'docker kill {backend_id}')",
                    )
                else:
                    analysis.kill = await kill_drill(admin, opts, killer, family)
            finally:
                with contextlib.suppress(Exception):
                    await admin.resize(original)
    analysis.finished = time.time()
    analysis.environment["load_end"] = f"{os.getloadavg()[0]:.1f}"
    return analysis
