"""The autoscaler: the pool's size follows the in-flight requests the balancer already sees.

Modelled on Knative's KPA (the metric is concurrency: in-flight requests per replica),
because lbproxy sits in the request path exactly like Knative's activator and can read the
signal without a metrics pipeline. ``Decider`` is the pure core (time is passed in, no I/O):

- In-flight is sampled every ``sample_interval`` and averaged over two windows: the
  *stable* window (smooths bursts away) and the short *panic* window.
- Each ``tick`` recommends ``ceil(average / target)`` replicas from the stable window.
  When the panic window alone asks for ``panic_threshold`` times the ready replicas, the
  decider *panics*: it never scales down, until a whole stable window passes without a
  panic condition (KPA's rule), and it sizes the pool by Little's law,
  ``ceil(arrival rate x service time / target)``, not by the in-flight count: after a
  step, in-flight counts the backlog that built up while the pool was too small, which is
  transient, and sizing by it overshot (1 -> 10 replicas for a step that needs 4). The
  service time is that of the calm before the panic; if a pool that large serves and
  still falls behind (the replicas got slower), in-flight sizes the panic again.
- A change must clear a 10% band around the current size (the HPA's tolerance), and a
  scale-down follows the highest recommendation of the last ``scale_down_delay`` seconds, so a
  constant load near a boundary does not flap.
- Outside panic, a change also needs the panic window on its side (the stable window lags
  a trend: after a ramp it would shrink a pool the plateau needs), and nothing scales down
  while the load is rising. A scale-up both windows ask for goes in one change (the HPA
  scales up at once to its current recommendation) to what Little's law asks with the
  service time of a pool at or under its target, capped at the panic window: the panic
  window of a pool that is too small counts that pool's queueing, and sizing by it
  overshot (2 -> 4 -> 3 replicas within 2.4 s under a constant 67.5 req/s that needs 3);
  capped at the lagging stable window, a pool that trailed a ramp caught up one step at
  a time. Where Little's law cannot size it, or asks for no more than the pool (the
  replicas got slower, or queue beyond the target at that size), the panic window.
- Rate limits: at most ``ceil(max_scale_up_rate * ready)`` and at least
  ``floor(actual / max_scale_down_rate)`` replicas after one decision.
- With ``min_replicas`` 0, a pool that saw no request at all for the stable window goes
  to zero at once (the idle stable window is its own stabilisation).
- An operator's ``/add`` or ``/rm`` (``manual``) becomes the current size: for one
  ``scale_down_delay`` the decider neither scales that pool down nor pulls it back into
  [min, max]; a load that needs more replicas still scales it up (to at most max).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lbproxy.config import AutoscaleConfig
from lbproxy.control.events import Event
from lbproxy.control.pool import Pool, ReplicaState
from lbproxy.control.reconcile import Reconciler
from lbproxy.errors import LbproxyError

log = logging.getLogger(__name__)

#: The HPA's 10% tolerance, both ways: the pool grows only for more than 110% of its
#: target and shrinks only when the smaller pool would still run below 90% of it.
TOLERANCE = 0.1
_EPS = 1e-9
#: The arrival rate that sizes a panic is measured over this share of the panic window
#: (0.5 s of the default 2 s): a panic starts at the sample that sees it, typically 0.3-0.5 s
#: after a step, and the rate over a whole panic window would still be mostly the old one.
RATE_SHARE = 0.25
#: Fewer 50 ms latency samples than this in the stable window: no service time (yet).
MIN_SERVICE_SAMPLES = 5
#: Pool sizes (this many more than now) whose rings are built ahead while nothing changes;
#: each ring also serves one replica fewer, so these cover 1 to 4 more (docs/autoscale.md).
RINGS_AHEAD = (2, 4)


def _ceil(x: float) -> int:
    """``ceil`` that does not turn 3.0000000000000004 into 4."""
    return max(0, math.ceil(x - _EPS))


def parse_bounds(text: str) -> tuple[int, int]:
    """``MIN:MAX`` (``--autoscale``) into two integers; ValueError with a reason otherwise."""
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"expected MIN:MAX such as 1:10, got {text!r}")
    try:
        low, high = int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"MIN and MAX must be integers, got {text!r}") from None
    if low < 0:
        raise ValueError(f"MIN must not be negative, got {low}")
    if high < 1:
        raise ValueError(f"MAX must be at least 1, got {high}")
    if low > high:
        raise ValueError(f"MIN ({low}) is larger than MAX ({high})")
    return low, high


class Window:
    """Samples of one value over the last ``span`` seconds; the mean is the time average.

    Samples come at a fixed interval, so their plain mean is the time-weighted mean. A
    running sum keeps ``mean`` O(1) per tick.
    """

    def __init__(self, span: float) -> None:
        self.span = span
        self._samples: deque[tuple[float, float]] = deque()
        self._sum = 0.0

    def add(self, now: float, value: float) -> None:
        self._samples.append((now, value))
        self._sum += value
        self._trim(now)

    def _trim(self, now: float) -> None:
        samples = self._samples
        while samples and samples[0][0] <= now - self.span:
            self._sum -= samples.popleft()[1]

    def mean(self, now: float) -> float:
        self._trim(now)
        if not self._samples:
            return 0.0
        return max(0.0, self._sum / len(self._samples))

    def __len__(self) -> int:
        return len(self._samples)


@dataclass(frozen=True, slots=True)
class Decision:
    """One tick's outcome: what the pool should be and what was seen."""

    time: float
    desired: int
    actual: int  # members of the pool (starting, up, down awaiting replacement)
    ready: int  # members on the ring
    stable: float  # mean in-flight requests over the stable window (whole pool)
    panic: float  # the same over the panic window
    panicking: bool
    reason: str  # load, panic, trend, idle, bounds, manual hold, rate limit
    rate: float | None = None  # arrivals per second, last RATE_SHARE of the panic window
    service: float | None = None  # seconds per request (median over the stable window)

    @property
    def per_replica(self) -> float:
        """Observed concurrency per ready replica (stable window)."""
        return self.stable / self.ready if self.ready else self.stable

    def detail(self) -> str:
        """The event text: ``key=value`` pairs, readable and easy to parse."""
        return (
            f"desired={self.desired} actual={self.actual} ready={self.ready} "
            f"concurrency={self.stable:.2f} panic_concurrency={self.panic:.2f} "
            f"per_replica={self.per_replica:.2f} mode={'panic' if self.panicking else 'stable'} "
            f"reason={self.reason.replace(' ', '_')}"
            + (f" rate={self.rate:.1f}" if self.rate is not None else "")
            + (f" service_ms={self.service * 1000:.1f}" if self.service is not None else "")
        )


class Decider:
    """KPA-like scaling decisions from sampled in-flight counts; pure, time passed in."""

    def __init__(self, config: AutoscaleConfig, now: float) -> None:
        self.config = config
        self._stable = Window(config.stable_window)
        self._panic = Window(config.panic_window)
        self._recs: deque[tuple[float, int]] = deque()
        self._panic_since: float | None = None
        self._panic_max = 0
        self._requests = -1
        self._last_activity = now
        self._manual_until = -math.inf
        # Little's law inputs: (time, cumulative arrivals = answered + in flight, answered)
        # over the panic window, and the mean latency of each calm sample's answers.
        self._rate_span = max(config.panic_window * RATE_SHARE, 5 * config.sample_interval)
        self._flow: deque[tuple[float, float, int]] = deque()
        self._service: deque[tuple[float, float]] = deque()
        self._panic_service: deque[tuple[float, float]] = deque()
        self._answered: int | None = None
        self._latency = 0.0
        self._sized_since: float | None = None  # in panic: ready >= the Little's-law size
        # The stable path's service time: calm samples taken while the pool ran at or under
        # its target (``_over_target``), for the replicas that served at the last decision.
        self._ready: int | None = None
        self._target_service: deque[tuple[float, float]] = deque()

    # -- inputs ---------------------------------------------------------------------------

    def observe(
        self,
        now: float,
        in_flight: float,
        requests: int,
        *,
        answered: int | None = None,
        latency: float | None = None,
    ) -> None:
        """One sample: requests in flight now and the cumulative count of requests seen.

        The counter makes idleness exact: a 1 ms request between two samples is never seen
        in flight, but it moves the counter, and it is traffic.
        ``answered`` and ``latency``: the balancer's cumulative count of the answers that
        reflect replica work (``Answers``) and the sum of their latencies (seconds), for
        the arrival rate and service time.
        """
        if in_flight > 0 or requests != self._requests:
            self._last_activity = now
        self._requests = requests
        self._stable.add(now, in_flight)
        self._panic.add(now, in_flight)
        if answered is None or latency is None:
            return
        # Every request that arrived is answered or still in flight: the arrivals are their
        # sum, with no counter on the request path.
        flow = self._flow
        flow.append((now, answered + in_flight, answered))
        while len(flow) > 2 and flow[1][0] <= now - self.config.panic_window:
            flow.popleft()
        if self._answered is not None and answered > self._answered:
            # Calm samples: in a panic every answer has waited in the backlog that started
            # it (and a backlog stuck in one replica's connections drains for many seconds);
            # the window keeps the last stable window of calm samples. Panic samples only
            # stand in while there is no calm one (traffic that started with the panic).
            mean = (latency - self._latency) / (answered - self._answered)
            calm = self._panic_since is None
            service = self._service if calm else self._panic_service
            service.append((now, mean))
            span = self.config.stable_window if calm else self.config.panic_window
            while service[0][0] <= now - span:
                service.popleft()
            if calm and not self._over_target(now):
                at_target = self._target_service
                at_target.append((now, mean))
                while at_target[0][0] <= now - self.config.stable_window:
                    at_target.popleft()
        self._answered, self._latency = answered, latency

    def _over_target(self, now: float) -> bool:
        """Whether the panic window's in-flight count is over the target (and its tolerance)
        of the replicas that served at the last decision: a pool that queues."""
        ready = self._ready
        if ready is None:
            return False
        return self._panic.mean(now) > ready * self.config.target * (1 + TOLERANCE)

    def _rates(self, span: float) -> tuple[float, float] | None:
        """(arrivals, answers) per second over the last ``span`` seconds of samples."""
        flow = self._flow
        if len(flow) < 2:
            return None
        t1, a1, n1 = flow[-1]
        # The latest sample at least ``span`` before the last one (else the oldest kept).
        t0, a0, n0 = next((f for f in reversed(flow) if f[0] <= t1 - span + _EPS), flow[0])
        if t1 <= t0:
            return None
        return max(0.0, (a1 - a0) / (t1 - t0)), max(0.0, (n1 - n0) / (t1 - t0))

    def rate(self) -> float | None:
        """Arrivals per second over the last ``RATE_SHARE`` of the panic window."""
        rates = self._rates(self._rate_span)
        return rates[0] if rates is not None else None

    def service_samples(self) -> int:
        """Calm samples in the service-time window (each one 50 ms of answers)."""
        return len(self._service)

    def service_time(self) -> float | None:
        """Seconds per request: the median of the 50 ms mean latencies of the last stable
        window of calm samples (the samples taken while panicking are kept apart).

        Queueing only adds to a latency, and a calm pool queues little, so this is what a
        request costs, the S of Little's law. A panic does not move it at all: if the
        service time itself changed, ``_keeping_up`` notices. Without calm samples (the
        traffic started with the panic) the panic window's samples stand in: they include
        its queueing, as the in-flight count would.
        """
        for service in (self._service, self._panic_service):
            median = _median_latency(service)
            if median is not None:
                return median
        return None

    def _service_at_target(self) -> float | None:
        """``service_time`` from the calm samples taken while the pool ran at or under its
        target only: what a request costs on a pool sized for the target.

        A pool over its target queues (67.5 req/s on 2 replicas of 4 slots: 5.2 in flight a
        replica, latencies 44% above those of the 3 it needs), and 10 s after a step short
        of a panic its samples were the median: a scale-up sized from them overshot as the
        in-flight count did (168 req/s on 5 replicas: 126 ms instead of 104, 5 -> 8 -> 7).
        The panic keeps ``service_time``: when it has a trailing pool's samples, their
        queueing sizes A-5's plateau (240 req/s on replicas that queue at their target) to
        the 10 replicas the in-flight target asks for; with the light load's service time
        alone, to 8 (docs/autoscale.md, "Overshoot")."""
        return _median_latency(self._target_service)

    def _keeping_up(self) -> bool:
        """Whether the pool answered, over the panic window, about as many requests per
        second as arrived (within the tolerance): a backlog that no longer grows."""
        rates = self._rates(self.config.panic_window)
        return rates is None or rates[1] >= rates[0] * (1 - TOLERANCE)

    def manual(self, now: float) -> None:
        """An operator changed the pool: hold that size for one scale-down delay."""
        self._manual_until = now + self.config.scale_down_delay
        self._recs.clear()

    def activity(self, now: float) -> None:
        """Demand seen outside the samples (a request held at an empty pool)."""
        self._last_activity = now

    # -- the decision --------------------------------------------------------------------------

    def idle_for(self, now: float) -> float:
        return now - self._last_activity

    @staticmethod
    def _banded(raw: float, actual: int) -> int:
        """``ceil(raw)`` replicas, unless ``raw`` is within the tolerance band of ``actual``.

        Growing needs more than 10% over the current size, shrinking must leave the smaller
        pool under 90% of its target: noise around a boundary moves nothing.
        """
        want = _ceil(raw)
        if actual > 0 and want > actual and raw <= actual * (1 + TOLERANCE):
            return actual
        if want < actual:
            return min(actual, _ceil(raw / (1 - TOLERANCE)))
        return want

    @staticmethod
    def _agreed(
        actual: int, rec: int, stable: float, panic: float, want_panic: int, up: int
    ) -> int:
        """``rec`` (from the stable window), moved only as far as the panic window agrees.

        The stable window lags a trend by half its span. Right after a ramp up it still
        averages in the ramp's lower load: it scaled a pool that the plateau needed back
        down (A-5: 10 -> 8 at 52 s under a constant 240 req/s, up again to 9 at 62 s).
        Right after a step down it still says "more" and would grow a pool the load no
        longer needs. So a change needs the panic window (the load now) on its side too and
        goes only as far as the more cautious of the two; and no scale-down while the load
        is rising (the panic window above the stable one by more than the tolerance).
        Under a constant load the windows agree and this changes nothing.

        A scale-up, once both windows ask for one, goes to ``up``, what the load now asks,
        in one change, even past the stable window's size: the stable window decides
        *whether*, ``up`` *how far*. Capped at the stable window's size, a pool that
        trailed a ramp caught up by one replica each time the stable mean crossed a band,
        under a constant load (ce8332f's A-5: 7 -> 8 at 49.7 s, 8 -> 10 at 53.2 s, both
        under 240 req/s). The HPA scales up the same way
        (``behavior.scaleUp.stabilizationWindowSeconds`` 0: at once, to the current
        recommendation) and keeps its stabilisation window for scale-down. ``up`` is
        Little's law's size where it can be measured, never more than the panic window's
        (``decide``).
        """
        if rec > actual:
            return max(actual, up)
        if rec < actual:
            if panic > stable * (1 + TOLERANCE):
                return actual
            return min(actual, max(rec, want_panic))
        return rec

    def _panic_condition(self, panic: float, ready: int) -> bool:
        c = self.config
        if ready == 0:
            return panic > 0
        return panic / c.target >= c.panic_threshold * ready

    def panic_starts(self, now: float, ready: int) -> bool:
        """Whether a decision now would enter panic: a load step is decided at the sample
        that sees it, not up to a tick later (the pool then serves that much sooner)."""
        return self._panic_since is None and self._panic_condition(self._panic.mean(now), ready)

    def panic_grows(self, now: float, actual: int) -> bool:
        """While panicking: whether the load now asks for more than ``actual``, so that
        it is decided at the sample that sees it too. A panic that starts while clients
        are still arriving sees only part of them at its first decision; with nothing
        else to wake it, the rest waited for the next tick."""
        if self._panic_since is None or actual >= self.config.max_replicas:
            return False
        return self._wanted_now(now, actual)[0] > actual

    def _wanted_now(self, now: float, actual: int) -> tuple[int, bool]:
        """What the load asks now, and whether Little's law sized it (concurrency = arrival
        rate x service time); the in-flight panic window where it cannot be measured (no
        answers yet)."""
        rate, service = self.rate(), self.service_time()
        if rate is not None and service is not None:
            return self._banded(rate * service / self.config.target, actual), True
        return self._banded(self._panic.mean(now) / self.config.target, actual), False

    def decide(self, now: float, actual: int, ready: int) -> Decision:
        c = self.config
        self._ready = ready
        stable = self._stable.mean(now)
        panic = self._panic.mean(now)
        want_stable = self._banded(stable / c.target, actual)
        want_panic = self._banded(panic / c.target, actual)
        want_now, sized = self._wanted_now(now, actual)
        if sized and want_now <= ready:
            if self._sized_since is None:
                self._sized_since = now
        else:
            self._sized_since = None

        # Panic: the short window alone asks for panic_threshold x the ready pool (the raw
        # ratio, as KPA: a rounded one would panic a single replica at 1.01x its target).
        if self._panic_condition(panic, ready):
            if self._panic_since is None:
                self._panic_max = 0
            self._panic_since = now
        elif self._panic_since is not None and now - self._panic_since >= c.stable_window:
            self._panic_since = None
            self._panic_max = 0
        panicking = self._panic_since is not None
        # The pool Little's law asked for has served a whole panic window and the backlog
        # still grows: the service time is not what it was (the replicas got slower), so
        # the in-flight count, which sees that at once, sizes the panic again.
        lagging = (
            self._sized_since is not None
            and now - self._sized_since >= c.panic_window
            and not self._keeping_up()
        )

        reason = "load"
        if panicking:
            # Sized by Little's law, never by in-flight (stable or panic window) then: both
            # count the backlog of the step, which the larger pool drains and which does not
            # come back. KPA follows the panic window alone too.
            wanted = (want_now,) if sized and not lagging else (want_panic, want_stable)
            self._panic_max = max(self._panic_max, *wanted, actual)
            rec = self._panic_max  # never scale down while panicking
            reason = "panic (lagging)" if lagging else "panic"
        else:
            rec = want_stable

        # Rate limits, relative to what serves now.
        up_limit = _ceil(c.max_scale_up_rate * max(ready, 1))
        down_limit = int(actual // c.max_scale_down_rate)
        limited = min(max(rec, down_limit), max(up_limit, actual))
        if limited != rec:
            reason = "rate limit"
        rec = limited

        # Scale-down stabilisation: follow the highest recommendation of the delay window.
        self._recs.append((now, rec))
        while self._recs and self._recs[0][0] <= now - c.scale_down_delay:
            self._recs.popleft()
        held = max(r for _, r in self._recs)
        if held > rec:
            reason = "scale-down delay"
        rec = held
        if not panicking:
            # How far a scale-up goes: Little's law (the concurrency KPA targets is arrival
            # rate x service time), with the service time of a pool at its target; not the
            # panic window alone, which on a pool that is too small counts its queueing:
            # 67.5 req/s on 2 replicas of 4 slots is 10.4 in flight, which asked for 4
            # (and 4 -> 3 once they served), where 68 x 0.107 s / 3 asks for 3. The panic
            # window where Little's law cannot size it, or asks for no more than the pool
            # (its service time is that of faster replicas, or the replicas queue beyond
            # the target at that size): the in-flight count sees both.
            rate, service = self.rate(), self._service_at_target()
            want_little = 0
            if rate is not None and service is not None:
                want_little = self._banded(rate * service / c.target, actual)
            up = min(want_panic, want_little) if want_little > actual else want_panic
            agreed = self._agreed(actual, rec, stable, panic, want_panic, up)
            agreed = min(agreed, max(up_limit, actual))
            if agreed < rec or (agreed == actual != rec):
                reason = "trend"  # held back by the load now
            elif agreed > rec:
                reason = "load"  # further than the stable window: the load now asks it
            rec = agreed

        if self.idle_for(now) >= c.stable_window and not panicking:
            rec = 0  # nothing at all for a stable window: no delay beyond that
            reason = "idle"
        elif rec == 0:
            rec = 1  # traffic too short to be sampled in flight is still traffic

        if now < self._manual_until:
            # Only what the load needs now overrides an operator's size.
            desired = max(actual, min(want_now, c.max_replicas))
            if desired == actual and rec != actual:
                reason = "manual hold"
            elif desired > actual:
                reason = "panic" if panicking else "load"
        else:
            desired = min(max(rec, c.min_replicas), c.max_replicas)
            if desired != rec and reason != "idle":
                reason = "bounds"
        if desired < actual:
            # The next scale-down needs a whole delay window of its own: the history was
            # recommended for the larger pool.
            self._recs = deque([(now, desired)])
        return Decision(
            now,
            desired,
            actual,
            ready,
            stable,
            panic,
            panicking,
            reason,
            self.rate(),
            self.service_time(),
        )


def _median_latency(samples: deque[tuple[float, float]]) -> float | None:
    """The median of (time, mean latency) samples, or None below ``MIN_SERVICE_SAMPLES``."""
    if len(samples) < MIN_SERVICE_SAMPLES:
        return None
    return statistics.median(mean for _, mean in samples)


class Cadence:
    """When ``Autoscaler.run`` decides: at every tick, and between ticks at the samples
    that cannot wait for one: a wake for a pool that holds requests (a cold start) or
    after a completed scale-up (more may be due), a load step that starts a panic, and a
    panic that asks for more than the pool has. The last three only while no change runs
    (one change at a time). Kept apart from the loop so that a replay on a virtual clock
    (tests/test_autoscale_decider.py) decides at exactly the samples production does."""

    def __init__(self, decider: Decider, tick: float, now: float) -> None:
        self._decider = decider
        self._tick = tick
        self.next_tick = now + tick

    def due(
        self, now: float, *, actual: int, ready: int, idle: bool, woken_for: bool = False
    ) -> bool:
        """Whether to decide at this sample (``woken_for``: woken by held requests or after
        a scale-up); if so the next tick is one tick from now."""
        decider = self._decider
        if (
            now >= self.next_tick
            or (woken_for and idle)
            or (idle and decider.panic_starts(now, ready))
            or (idle and decider.panic_grows(now, actual))
        ):
            self.next_tick = now + self._tick
            return True
        return False


class Answers(Protocol):
    """The data plane's answer counters the autoscaler reads (``ProxyStats``; no import of
    the data plane): the answers that reflect replica work (2xx and 3xx relayed from a
    replica) and the sum of their latencies. Every answer would let cheap 4xx answers pull
    the service time down and a WebSocket's lifetime push it up."""

    @property
    def work_answers(self) -> int: ...

    @property
    def work_seconds(self) -> float: ...


class Autoscaler:
    """Runs the ``Decider`` against the live pool: samples, decides, adds and removes.

    Scale-up is ``Reconciler.add(n, [])``, the call behind ``POST /add`` with no hostnames,
    so new replicas get the names /add would generate, start together and join the ring
    together (one ring build) once their heartbeats pass. Scale-down is
    ``Reconciler.remove(n, [])``, the call behind ``DELETE /rm``: failed replicas go first,
    then the most recently added; they leave the ring at once and finish their in-flight
    requests before they stop, so nothing fails.
    One change runs at a time; decisions keep being made (and reported) meanwhile.

    Manual changes: the autoscaler expects the pool to change only by its own calls; any
    other change of the member count is an operator's /add or /rm, which becomes the current
    size and is held for one scale-down delay (see ``Decider.manual``).
    """

    def __init__(
        self,
        config: AutoscaleConfig,
        pool: Pool,
        reconciler: Reconciler,
        held: Callable[[], int] = lambda: 0,
        answers: Answers | None = None,
    ) -> None:
        """``answers``: the balancer's answer counters, for the arrival rate and service
        time that size a panic (without them a panic is sized by in-flight requests)."""
        self.config = config
        self._pool = pool
        self._reconciler = reconciler
        self._answers = answers
        #: Requests waiting at an empty pool (the scale-to-zero hold): demand too.
        self.held = held
        self._wake = asyncio.Event()
        self._action: asyncio.Task[None] | None = None
        self._expected = -1
        self._follow_up = False
        #: The (ring, pool size) whose rings ahead were all found built: nothing to ask the
        #: pool again at every sample until a change makes another ring or pool size.
        self._ahead_for: tuple[object, int] | None = None
        self._served: dict[str, int] = {}
        self._requests = 0
        self.decider: Decider | None = None
        self.last: Decision | None = None
        self.decisions = 0
        self.scale_ups = 0
        self.scale_downs = 0
        self.failed_changes = 0
        self.manual_changes = 0
        #: Scale to zero (min 0): requests at an empty pool wait here for a cold start.
        self.hold: ColdStartHold | None = None
        if config.min_replicas == 0:
            self.hold = ColdStartHold(config, pool, self.wake)
            self.held = self.hold.waiting

    # -- signals -----------------------------------------------------------------------------

    def wake(self) -> None:
        """Decide now rather than at the next tick (a request is waiting at an empty pool)."""
        self._wake.set()

    @property
    def desired(self) -> int:
        return self.last.desired if self.last is not None else len(self._pool)

    def ready(self) -> int:
        """Members that serve: UP and on the ring in use. A replica is UP once its
        heartbeats pass; it serves once the ring built off the loop is in (about 1 s later
        at N = 10 with the default table), and until then it adds no capacity."""
        names = self._pool.ring.names
        return sum(
            1 for r in self._pool.replicas() if r.state is ReplicaState.UP and r.name in names
        )

    def in_flight(self) -> int:
        return sum(r.in_flight for r in self._pool.replicas()) + self.held()

    def _count_requests(self) -> int:
        """A monotonic count of answered requests (per-replica counters come and go)."""
        seen = self._served
        for replica in self._pool.replicas():
            total = replica.served_total
            before = seen.get(replica.name, 0)
            if total > before:
                self._requests += total - before
            seen[replica.name] = total
        if len(seen) > 2 * len(self._pool) + 16:
            members = set(self._pool.names())
            for name in [n for n in seen if n not in members]:
                del seen[name]
        return self._requests

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Sample every ``sample_interval``, decide every ``tick`` (or when woken)."""
        c = self.config
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.decider = decider = Decider(c, now)
        self._expected = len(self._pool)
        cadence = Cadence(decider, c.tick, now)
        try:
            while True:
                woken = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=c.sample_interval)
                    woken = True
                self._wake.clear()
                now = loop.time()
                held = self.held()
                answers = self._answers
                if answers is None:
                    decider.observe(now, self.in_flight(), self._count_requests())
                else:
                    decider.observe(
                        now,
                        self.in_flight(),
                        self._count_requests(),
                        answered=answers.work_answers,
                        latency=answers.work_seconds,
                    )
                if held:
                    decider.activity(now)
                # Decisions keep to the tick, except: a wake for an empty pool (a cold
                # start) or after a scale-up, a load step that starts a panic, and a
                # panic that asks for more.
                idle = self._action is None
                if idle:
                    self._build_rings_ahead()
                if cadence.due(
                    now,
                    actual=len(self._pool),
                    ready=self.ready() if idle else 0,  # read only while no change runs
                    idle=idle,
                    woken_for=woken and bool(held or self._follow_up),
                ):
                    self._follow_up = False
                    self._tick(now)
        finally:
            if self.hold is not None:
                self.hold.close()
            action = self._action
            if action is not None:
                action.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await action

    def _build_rings_ahead(self) -> None:
        """While no change runs, have the worker build the rings of the next scale-ups
        (``RINGS_AHEAD``), one at a time, for the names /add will give them.

        A scale-up's ring used to be built from its decision on, beside its replicas'
        starts: on two loaded cores the nice-10 worker finished it 0.45-1.0 s after they
        had passed their heartbeats (bench/autoscale_step.py), and they served only then.
        Built while the pool is steady, it is in when they are up. The worker derives
        each from the table it built last (a pass per new member), and ``Pool.speculate``
        starts nothing while the pool changes or another build runs."""
        names_ahead = getattr(self._reconciler, "names_ahead", None)
        if names_ahead is None:
            return
        n = len(self._pool)
        ahead_for = (self._pool.ring, n)
        if ahead_for == self._ahead_for:
            return
        for size in sorted({min(n + k, self.config.max_replicas) for k in RINGS_AHEAD}):
            if size > n and not self._pool.speculate(names_ahead(size - n)):
                return
        self._ahead_for = ahead_for

    def _tick(self, now: float) -> None:
        decider = self.decider
        assert decider is not None
        actual = len(self._pool)
        if self._action is None and actual != self._expected:
            self.manual_changes += 1
            decider.manual(now)
            self._pool.events.emit(
                "autoscale",
                "",
                f"manual change: {self._expected} -> {actual} replicas; held for "
                f"{self.config.scale_down_delay:g}s",
            )
            self._expected = actual
        decision = decider.decide(now, actual, self.ready())
        self.decisions += 1
        previous, self.last = self.last, decision
        changes = decision.desired != actual and self._action is None
        if (
            changes
            or previous is None
            or (decision.desired != previous.desired or decision.panicking != previous.panicking)
        ):
            self._pool.events.emit("autoscale", "", decision.detail())
        if changes:
            # The whole change in one /add: its replicas start together and join the ring
            # in one build. Batches of at most the ready count (1, 2, 4, ...) cost a start
            # and a ring build each, one after the other (a Maglev build of the default
            # table takes the nice-10 worker 0.5-1.5 s on two loaded cores): a step from 1
            # to 10 replicas was on the ring 7.5 s after the step, 4.4 s now.
            delta = decision.desired - actual
            self._action = asyncio.create_task(self._scale(delta), name="autoscale-change")

    async def _scale(self, delta: int) -> None:
        """One change through the /add or /rm path; failures are reported, never raised."""
        try:
            if delta > 0:
                await self._reconciler.add(delta, [])
                self.scale_ups += 1
                self._follow_up = True  # decide again now: more batches may be due
            else:
                await self._reconciler.remove(-delta, [])
                self.scale_downs += 1
            self._expected += delta
            self._pool.events.emit(
                "autoscale",
                "",
                f"scaled {'up' if delta > 0 else 'down'} by {abs(delta)}: "
                f"actual={len(self._pool)} ready={self.ready()}",
            )
        except LbproxyError as exc:
            self.failed_changes += 1
            self._pool.events.emit("autoscale", "", f"change of {delta:+d} failed: {exc.message}")
            log.warning("autoscale change of %+d failed: %s", delta, exc.message)
        finally:
            self._action = None
            if self._follow_up or self.held():
                self._wake.set()


class Holdable(Protocol):
    """What the hold needs of a request (the relay's Exchange; no import of the data plane)."""

    @property
    def dead(self) -> bool: ...

    def reroute(self) -> None: ...

    def fail(self, status: int, message: str) -> None: ...


#: How often held requests look for a routable ring (besides the replicas' 'up' events).
_HOLD_POLL = 0.05
#: Cold starts remembered for the status view and metrics.
_COLD_STARTS_KEPT = 100


class ColdStartHold:
    """Scale to zero's activator: requests that find the pool empty wait for a replica.

    The relay offers a request here when the ring is empty (``Frontend.on_empty``). It
    waits, at most ``hold_timeout`` seconds and at most ``hold_queue`` of them, while the
    autoscaler (woken at once) starts a replica; the first replica ``up`` releases them
    all onto the ring. Beyond either limit the request gets a 503 in SPEC's failure shape
    that says which limit it hit. The time from the first held request to the release is
    the cold-start latency, reported as a ``cold_start`` event and a metric.
    """

    def __init__(self, config: AutoscaleConfig, pool: Pool, wake: Callable[[], None]) -> None:
        self.config = config
        self._pool = pool
        self._wake = wake
        self._loop = asyncio.get_running_loop()
        self._queue: deque[tuple[float, Holdable]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._release_soon: asyncio.Handle | None = None
        self._poll: asyncio.TimerHandle | None = None
        self.cold_starts: deque[float] = deque(maxlen=_COLD_STARTS_KEPT)
        self.cold_start_count = 0
        self.held_total = 0
        self.rejected: dict[str, int] = {"timeout": 0, "queue_full": 0}
        self._unsubscribe = pool.events.subscribe(self._on_event)

    def waiting(self) -> int:
        return sum(1 for _, e in self._queue if not e.dead)

    def offer(self, exchange: Holdable) -> bool:
        """Take a request that found the ring empty; False leaves it to the relay's 503."""
        if len(self._queue) >= self.config.hold_queue:
            self._queue = deque(item for item in self._queue if not item[1].dead)
        if len(self._queue) >= self.config.hold_queue:
            self.rejected["queue_full"] += 1
            exchange.fail(
                503,
                f"no replica is available: the pool is starting from zero and "
                f"{self.config.hold_queue} requests already wait for it",
            )
            return True
        now = self._loop.time()
        self._queue.append((now, exchange))
        self.held_total += 1
        if self._timer is None:
            self._timer = self._loop.call_later(self.config.hold_timeout, self._expire)
        if self._routable():  # a replica came up between the relay's look and now
            self._schedule_release()
        else:
            self._wake()
            if self._poll is None:
                self._poll = self._loop.call_later(_HOLD_POLL, self._check)
        return True

    def _routable(self) -> bool:
        """A replica is UP and on the ring in use (ring builds may lag the pool)."""
        names = self._pool.ring.names
        return any(r.state is ReplicaState.UP and r.name in names for r in self._pool.replicas())

    def _check(self) -> None:
        """While requests wait: release them once the ring can route (catches ring swaps
        that come after the replica's 'up' event when the ring is built in a worker)."""
        self._poll = None
        if not self._queue:
            return
        if self._routable():
            self._schedule_release()
        else:
            self._poll = self._loop.call_later(_HOLD_POLL, self._check)

    def _on_event(self, event: Event) -> None:
        if event.kind == "up" and self._queue:
            self._schedule_release()

    def _schedule_release(self) -> None:
        # Not from inside the pool's event emission: relaying may touch the pool again.
        if self._release_soon is None:
            self._release_soon = self._loop.call_soon(self._release)

    def _release(self) -> None:
        self._release_soon = None
        if not self._queue or not self._routable():
            if self._queue and self._poll is None:
                self._poll = self._loop.call_later(_HOLD_POLL, self._check)
            return
        queue, self._queue = self._queue, deque()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        now = self._loop.time()
        latency = now - queue[0][0]
        live = [e for _, e in queue if not e.dead]
        self.cold_starts.append(latency)
        self.cold_start_count += 1
        self._pool.events.emit(
            "cold_start",
            "",
            f"released {len(live)} held request(s); the first waited {latency * 1000:.0f} ms",
        )
        for exchange in live:
            exchange.reroute()

    def _expire(self) -> None:
        """Fail the requests that waited ``hold_timeout``; re-arm for the rest."""
        self._timer = None
        now = self._loop.time()
        limit = self.config.hold_timeout
        queue = self._queue
        while queue and now - queue[0][0] >= limit - 1e-3:
            _, exchange = queue.popleft()
            if not exchange.dead:
                self.rejected["timeout"] += 1
                exchange.fail(
                    503,
                    f"no replica is available: none started within {limit:g}s "
                    "(the pool is scaling from zero)",
                )
        if queue:
            self._timer = self._loop.call_later(limit - (now - queue[0][0]), self._expire)

    def close(self) -> None:
        """Shutdown: nothing will start any more; answer whoever still waits."""
        self._unsubscribe()
        for handle in (self._timer, self._release_soon, self._poll):
            if handle is not None:
                handle.cancel()
        queue, self._queue = self._queue, deque()
        for _, exchange in queue:
            if not exchange.dead:
                exchange.fail(503, "no replica is available: the balancer is shutting down")
