"""Heartbeat checks: each replica is probed on its own phase, spread over the interval.

A replica that misses ``fall`` heartbeats in a row leaves the ring at once and the
reconciler replaces it; this is the second line of detection behind the backend's own
death events (a hung replica still runs, so only the heartbeat catches it).

The probes are spread over the interval as HAProxy spreads its checks (``start_checks()``
in its src/check.c): probing every replica at the same instant, 100 probes at once every
second at N = 100, showed in the tail latency of client requests. ``CheckSchedule`` decides
when each incarnation is probed (pure, a clock value in, due times out); ``HealthMonitor``
runs it on the event loop and applies each answer to the incarnation it came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

import aiohttp

from lbproxy.config import HealthConfig
from lbproxy.control.pool import Incarnation, Pool, Replica, ReplicaState

log = logging.getLogger(__name__)


_DEFAULT_CHECK = HealthConfig()
#: The monitor looks for replicas that joined or left this many times per interval (a scan
#: is O(N); once per probe it would cost O(N^2) per interval at N = 1000).
_SCANS_PER_INTERVAL = 10
#: The states whose replicas are probed: on the ring, or ejected and waiting to come back.
_WATCHED = (ReplicaState.UP, ReplicaState.EJECTED)

K = TypeVar("K", bound=Hashable)


async def probe(
    session: aiohttp.ClientSession,
    url: str,
    timeout: float,
    check: HealthConfig = _DEFAULT_CHECK,
) -> bool:
    """True when ``check.method url+check.path`` answers a status in ``check.status`` within
    ``timeout`` seconds. Redirects are not followed: like HAProxy's ``http-check``, the
    status range alone decides."""
    low, high = check.status
    try:
        async with session.request(
            check.method,
            url + check.path,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            await resp.read()
            return low <= resp.status <= high
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


class CheckSchedule(Generic[K]):
    """When each watched key (an incarnation) is checked next; no awaits, no clock of its own.

    - ``start``: keys known at once (the monitor's first look) are spread as HAProxy's
      ``start_checks()`` does: key i of n first at ``(interval + r_i) * i / n``, r_i the
      spread jitter, so the first checks are evenly apart instead of one burst.
    - ``join``: a key that comes later takes the middle of the soonest gap between the
      upcoming checks that is at least as wide as the mean gap. Its neighbours stay at least
      half the even spacing away, and its first check comes within one interval, usually
      within 1/N of one (HAProxy starts a dynamic server's checks a whole interval later).
    - Fixed rate: the check after one scheduled at t is due at ``t + interval + r``, however
      long the probe took (a slow probe never pushes its replica's phase back); a probe still
      running when its next check falls due is followed at once, never overlapped.
    - ``spread_pct`` is HAProxy's ``spread-checks``: r is uniform in +/- that percent of the
      interval, drawn for every check (so the phases drift apart as a random walk, which is
      what de-synchronises several checkers of the same replicas).
    """

    def __init__(
        self, interval: float, spread_pct: int = 0, rng: random.Random | None = None
    ) -> None:
        if interval <= 0:
            raise ValueError("the interval must be positive")
        if not 0 <= spread_pct <= 50:
            raise ValueError("spread_pct must be from 0 to 50")
        self.interval = interval
        self.spread_pct = spread_pct
        self._rng = rng if rng is not None else random.Random()
        self._due: dict[K, float] = {}  # every key: its next check (also while one runs)
        self._running: set[K] = set()
        self._version: dict[K, int] = {}
        self._heap: list[tuple[float, int, K, int]] = []  # (due, seq, key, version), lazy
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def due_of(self, key: K) -> float:
        """When ``key`` is checked next (KeyError for a key not scheduled)."""
        return self._due[key]

    def _jitter(self) -> float:
        """HAProxy's ``rv``: uniform in [-pct, +pct] percent of the interval (0 without)."""
        if not self.spread_pct:
            return 0.0
        spread = self.interval * self.spread_pct / 100
        return spread - 2 * spread * self._rng.random()

    def _push(self, key: K, due: float) -> None:
        version = self._version.get(key, 0) + 1
        self._version[key] = version
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key, version))

    def start(self, keys: Sequence[K], now: float) -> None:
        """Spread ``keys`` over the interval from ``now`` (HAProxy's ``start_checks()``)."""
        n = len(keys)
        for position, key in enumerate(keys):
            if key in self._due:
                raise ValueError(f"{key!r} is already scheduled")
            self._push(key, now + (self.interval + self._jitter()) * position / n)

    def join(self, key: K, now: float) -> float:
        """Schedule ``key`` in the soonest gap at least as wide as the mean; its first check."""
        if key in self._due:
            raise ValueError(f"{key!r} is already scheduled")
        due = now + self._join_offset(now)
        self._push(key, due)
        return due

    def _join_offset(self, now: float) -> float:
        if not self._due:
            return 0.0
        interval = self.interval
        points = sorted((due - now) % interval for due in self._due.values())
        # Gaps between consecutive upcoming checks, the last one wrapping round to the first.
        ends = [*points[1:], points[0] + interval]
        mean = interval / len(points)
        best: float | None = None
        for start, end in zip(points, ends, strict=True):
            if end - start >= mean * (1 - 1e-9):
                middle = ((start + end) / 2) % interval
                if best is None or middle < best:
                    best = middle
        assert best is not None  # some gap is at least the mean
        return best

    def leave(self, key: K) -> None:
        """Stop checking ``key`` (its entry in the heap is skipped when it comes up)."""
        self._due.pop(key, None)
        self._version.pop(key, None)
        self._running.discard(key)

    def take_due(self, now: float) -> list[tuple[K, float]]:
        """Keys due by ``now``, earliest first, with the time each was due for; each is now
        running and its next check is scheduled (fixed rate from the time it was due for)."""
        taken: list[tuple[K, float]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, key, version = heapq.heappop(heap)
            if self._version.get(key) != version:
                continue  # left, or rescheduled since
            self._running.add(key)
            self._due[key] = due + self.interval + self._jitter()
            taken.append((key, due))
        return taken

    def done(self, key: K, now: float) -> bool:
        """``key``'s check finished at ``now``. True when its next check is already due (the
        probe outlasted the interval): the caller should look again at once."""
        if key not in self._running:
            return False
        self._running.discard(key)
        due = max(self._due[key], now)
        self._push(key, due)
        return due <= now

    def next_due(self) -> float | None:
        """The earliest check not running yet, or None when there is none."""
        heap = self._heap
        while heap and self._version.get(heap[0][2]) != heap[0][3]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None


#: A probe: the incarnation's URL in, pass or miss out.
Probe = Callable[[str], Awaitable[bool]]


class HealthMonitor:
    """Probes UP and ejected replicas, each once per ``interval`` on its own phase; reports
    the ones that fall and readmits ejected ones that pass."""

    def __init__(
        self,
        pool: Pool,
        session: aiohttp.ClientSession,
        config: HealthConfig,
        on_down: Callable[[Replica, str], None],
        *,
        probe: Probe | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``probe``: how one incarnation is asked (default: ``config``'s HTTP check over
        ``session``); tests pass a recorder."""
        self._pool = pool
        self._session = session
        self._config = config
        self._on_down = on_down
        self._probe: Probe = probe if probe is not None else self._http_probe
        self._schedule: CheckSchedule[Incarnation] = CheckSchedule(
            config.interval, config.spread_checks, rng
        )
        self._members: dict[Incarnation, Replica] = {}  # what the schedule holds
        self._running: dict[Incarnation, asyncio.Task[None]] = {}
        self._owed: set[Incarnation] = set()  # not yet probed in the current pass
        self._wake = asyncio.Event()
        #: Completed passes: every replica watched at a pass's start was probed once.
        self.rounds = 0
        self.probes = 0
        self.failures = 0

    async def _http_probe(self, url: str) -> bool:
        return await probe(self._session, url, self._config.timeout, self._config)

    def next_check(self, replica: Replica) -> float | None:
        """When (loop time) ``replica``'s current incarnation is probed next, if scheduled."""
        incarnation = replica.incarnation
        if incarnation is None or incarnation not in self._schedule:
            return None
        return self._schedule.due_of(incarnation)

    # -- applying an answer ------------------------------------------------------------------

    def _apply(self, replica: Replica, incarnation: Incarnation, ok: bool) -> None:
        """One probe's answer, for the incarnation it was sent to; dropped if that is gone."""
        if not self._still_watched(replica, incarnation):
            return  # removed, died or replaced while we waited: not this one's result
        if ok:
            incarnation.fails = 0
            if replica.state is ReplicaState.EJECTED:
                self._pool.readmit(replica)
            return
        incarnation.fails += 1
        self.failures += 1
        if incarnation.fails >= self._config.fall:
            reason = f"missed {incarnation.fails} heartbeats"
            log.warning("replica %r %s; replacing it", replica.name, reason)
            self._pool.events.emit("heartbeat_down", replica.name, reason)
            self._on_down(replica, reason)

    def _watched(self) -> list[tuple[Replica, Incarnation]]:
        return [
            (r, r.incarnation)
            for r in self._pool.replicas()
            if r.state in _WATCHED and r.incarnation is not None
        ]

    async def check_once(self) -> None:
        """Probe every watched incarnation once, all at once; apply each answer to the one it
        came from (a manual pass; ``run`` spreads the probes instead).

        The pass captures (member, incarnation) pairs: an answer that arrives after its
        incarnation died and was replaced is dropped, so with ``fall`` 1 a late miss of the
        dead process cannot take its healthy replacement off the ring.
        """
        targets = self._watched()
        if not targets:
            return
        results = await asyncio.gather(*(self._probe(inc.url) for _, inc in targets))
        for (replica, incarnation), ok in zip(targets, results, strict=True):
            self.probes += 1
            self._apply(replica, incarnation, ok)
        self.rounds += 1

    # -- the schedule on the loop -------------------------------------------------------------

    def _scan(self, now: float) -> None:
        """Schedule incarnations that became watched, drop those that are not any more."""
        current = {inc: replica for replica, inc in self._watched()}
        for incarnation in [inc for inc in self._members if inc not in current]:
            self._forget(incarnation)
        new = [inc for inc in current if inc not in self._members]
        if not new:
            self._pass_check()
            return
        if not self._members:
            self._schedule.start(new, now)  # the first look, or after the pool was empty
            self._owed.update(new)
        else:
            for incarnation in new:
                self._schedule.join(incarnation, now)
        for incarnation in new:
            self._members[incarnation] = current[incarnation]
        self._pass_check()

    def _still_watched(self, replica: Replica, incarnation: Incarnation) -> bool:
        return replica.state in _WATCHED and self._pool.is_current(replica, incarnation)

    def _forget(self, incarnation: Incarnation) -> None:
        del self._members[incarnation]
        self._schedule.leave(incarnation)
        self._owed.discard(incarnation)
        self._pass_check()

    def _pass_check(self) -> None:
        if not self._owed and self._members:
            if self.probes:
                self.rounds += 1
            self._owed = set(self._members)

    async def _check(self, replica: Replica, incarnation: Incarnation) -> None:
        loop = asyncio.get_running_loop()
        try:
            ok = await self._probe(incarnation.url)
        except Exception:  # a probe must not take the monitor down; a bug, so say so
            log.exception("heartbeat probe of %r failed", replica.name)
        else:
            self.probes += 1
            try:
                self._apply(replica, incarnation, ok)
            except Exception:
                log.exception("applying the heartbeat of %r failed", replica.name)
        finally:
            self._running.pop(incarnation, None)
            if self._schedule.done(incarnation, loop.time()):
                self._wake.set()
            self._owed.discard(incarnation)
            self._pass_check()

    async def run(self) -> None:
        """Probe each watched replica once per interval on its own phase, until cancelled;
        cancelling stops the probes in flight too."""
        loop = asyncio.get_running_loop()
        scan_every = self._config.interval / _SCANS_PER_INTERVAL
        next_scan = loop.time()
        try:
            while True:
                now = loop.time()
                if now >= next_scan:
                    try:
                        self._scan(now)
                    except Exception:  # the monitor must outlive any bug in one look
                        log.exception("heartbeat scan failed")
                    next_scan = now + scan_every
                for incarnation, _ in self._schedule.take_due(now):
                    replica = self._members[incarnation]
                    if not self._still_watched(replica, incarnation):
                        self._forget(incarnation)  # left since the last scan: never probe it
                        continue
                    self._running[incarnation] = loop.create_task(
                        self._check(replica, incarnation), name=f"heartbeat {replica.name}"
                    )
                wake_at = next_scan
                due = self._schedule.next_due()
                if due is not None and due < wake_at:
                    wake_at = due
                self._wake.clear()
                timer = loop.call_at(wake_at, self._wake.set)
                try:
                    await self._wake.wait()
                finally:
                    timer.cancel()
        finally:
            running = list(self._running.values())
            for task in running:
                task.cancel()
            for task in running:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def wait_ready(
    session: aiohttp.ClientSession,
    url: str,
    *,
    rise: int,
    timeout: float,
    check_timeout: float,
    dead: Callable[[], bool],
    check: HealthConfig,
    poll: float = 0.05,
) -> bool:
    """Poll a new replica fast until ``rise`` heartbeats pass in a row; False on timeout/death.

    ``check`` has no default: a caller that forgot it probed ``/heartbeat`` whatever
    ``--health-path`` said (the Swarm reconciler did). This, not the monitor, gates a new
    incarnation's join: the monitor probes it only once it is UP, on the phase
    ``CheckSchedule.join`` gives it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    passes = 0
    while loop.time() < deadline:
        if dead():
            return False
        left = min(check_timeout, max(0.05, deadline - loop.time()))
        if await probe(session, url, left, check):
            passes += 1
            if passes >= rise:
                return True
        else:
            passes = 0
        await asyncio.sleep(poll)
    return False
