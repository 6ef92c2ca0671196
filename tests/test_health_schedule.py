"""The heartbeat schedule: each replica probed on its own phase, spread over the interval.

HAProxy's ``start_checks()`` offsets server i's first check by i/N of the interval and
``spread-checks`` randomises each interval by +/- a percentage; the monitor used to probe
every replica at the same instant (100 probes at once every second at N = 100). The
loop-driven tests run the monitor on a virtual clock (time jumps to the next timer when
nothing is ready), so "when" is exact and no test sleeps or depends on the machine's speed.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from lbproxy.backends.base import ReplicaHandle
from lbproxy.config import Config, ConfigError, HealthConfig
from lbproxy.control.health import CheckSchedule, HealthMonitor, Probe
from lbproxy.control.pool import Pool, Replica, ReplicaState
from lbproxy.ring import make_family

pytestmark = pytest.mark.unit


# -- the schedule alone (pure) ----------------------------------------------------------------


def test_start_spreads_the_first_checks_evenly_like_haproxy() -> None:
    schedule: CheckSchedule[str] = CheckSchedule(1.0)
    keys = [f"r{i}" for i in range(5)]
    schedule.start(keys, now=100.0)
    assert [schedule.due_of(k) for k in keys] == pytest.approx([100.0, 100.2, 100.4, 100.6, 100.8])
    assert [k for k, _ in schedule.take_due(100.0)] == ["r0"]  # one at a time, not a burst


def test_fixed_rate_keeps_each_phase_without_spread() -> None:
    schedule: CheckSchedule[str] = CheckSchedule(0.5)
    schedule.start(["a", "b"], now=0.0)
    seen: dict[str, list[float]] = {"a": [], "b": []}
    now = 0.0
    while now < 5.0:
        for key, due in schedule.take_due(now):
            seen[key].append(due)
            schedule.done(key, now + 0.01)  # a quick probe
        nxt = schedule.next_due()
        assert nxt is not None
        now = nxt
    assert seen["a"] == pytest.approx([0.5 * k for k in range(10)])
    assert seen["b"] == pytest.approx([0.25 + 0.5 * k for k in range(10)])


def test_spread_checks_draws_each_delay_within_plus_minus_pct_of_the_interval() -> None:
    """HAProxy: rv = inter * pct / 100, then rv -= 2 * rv * random: uniform in +/- pct %."""
    schedule: CheckSchedule[str] = CheckSchedule(1.0, spread_pct=10, rng=random.Random(7))
    schedule.start(["a"], now=0.0)
    delays: list[float] = []
    now = 0.0
    for _ in range(400):
        [(key, due)] = schedule.take_due(now)
        schedule.done(key, due)
        nxt = schedule.next_due()
        assert nxt is not None
        delays.append(nxt - due)
        now = nxt
    assert all(0.9 <= d <= 1.1 for d in delays)
    assert min(delays) < 0.92 and max(delays) > 1.08  # both sides of the range are used


def test_start_with_spread_scales_each_offset_like_haproxy() -> None:
    """start_check_task(): mininter += rnd, first check at mininter * srvpos / nbcheck."""
    schedule: CheckSchedule[int] = CheckSchedule(1.0, spread_pct=50, rng=random.Random(3))
    schedule.start(list(range(8)), now=0.0)
    for i in range(8):
        assert 0.5 * i / 8 <= schedule.due_of(i) <= 1.5 * i / 8


def test_a_joiner_goes_in_the_middle_of_the_soonest_gap() -> None:
    schedule: CheckSchedule[str] = CheckSchedule(1.0)
    schedule.start(["a", "b", "c", "d"], now=0.0)  # 0, .25, .5, .75
    [(key, _)] = schedule.take_due(0.0)  # a runs; its next check is at 1.0
    schedule.done(key, 0.01)
    # At 0.1 we are in the gap between a's phase (0) and b's (0.25): its middle is ahead.
    assert schedule.join("e", now=0.1) == pytest.approx(0.125)
    # The next joiner (five checks, mean gap 0.2) takes the next quarter-wide gap, b to c.
    assert schedule.join("f", now=0.1) == pytest.approx(0.375)


def test_a_joiner_skips_a_narrow_gap_for_a_wide_one() -> None:
    schedule: CheckSchedule[str] = CheckSchedule(1.0)
    schedule.start(["a"], now=0.0)
    schedule.start(["b"], now=0.1)  # (start on a busy schedule: each list spread alone)
    schedule.start(["c"], now=0.5)
    # Gaps 0-0.1 (narrow), 0.1-0.5, 0.5-1.0; the mean is 1/3: the soonest wide one is next.
    assert schedule.join("d", now=0.0) == pytest.approx(0.3)


def test_a_joiner_between_two_checks_takes_the_opposite_phase() -> None:
    schedule: CheckSchedule[str] = CheckSchedule(1.0)
    schedule.start(["a"], now=0.0)
    schedule.take_due(0.0)
    schedule.done("a", 0.0)  # a: next at 1.0
    assert schedule.join("b", now=0.0) == pytest.approx(0.5)
    assert schedule.join("c", now=0.45) == pytest.approx(0.75)


def test_a_joiner_into_an_empty_schedule_is_checked_at_once() -> None:
    schedule: CheckSchedule[str] = CheckSchedule(1.0)
    assert schedule.join("a", now=3.0) == 3.0


def test_joiners_keep_every_check_at_least_half_the_even_spacing_apart() -> None:
    rng = random.Random(11)
    schedule: CheckSchedule[int] = CheckSchedule(1.0)
    schedule.start(list(range(10)), now=0.0)
    now = 0.0
    for key in range(10, 40):
        now += rng.uniform(0.0, 0.3)
        for k, _ in schedule.take_due(now):
            schedule.done(k, now)
        schedule.join(key, now)
        phases = sorted(schedule.due_of(k) % 1.0 for k in range(key + 1))
        gaps = [b - a for a, b in zip(phases, [*phases[1:], phases[0] + 1.0], strict=True)]
        # Each join splits a gap at least the mean wide: no gap under half of the smallest
        # mean there was (1/40 at the end), i.e. never two checks at one instant.
        assert min(gaps) >= 0.5 / 40 - 1e-9


def test_a_slow_probe_is_followed_at_once_and_never_overlapped() -> None:
    schedule: CheckSchedule[str] = CheckSchedule(1.0)
    schedule.start(["a"], now=0.0)
    assert [k for k, _ in schedule.take_due(0.0)] == ["a"]
    assert schedule.next_due() is None  # running: not due again while it runs
    assert schedule.take_due(5.0) == []
    assert schedule.done("a", 1.7) is True  # outlasted its interval: due now
    assert [(k, d) for k, d in schedule.take_due(1.7)] == [("a", 1.7)]
    assert schedule.done("a", 1.8) is False
    assert schedule.next_due() == pytest.approx(2.7)


def test_leave_drops_a_key_even_while_its_check_runs() -> None:
    schedule: CheckSchedule[str] = CheckSchedule(1.0)
    schedule.start(["a", "b"], now=0.0)
    schedule.take_due(0.0)
    schedule.leave("a")
    schedule.leave("b")
    assert schedule.done("a", 0.1) is False
    assert schedule.next_due() is None and len(schedule) == 0


def test_spread_checks_is_declared_with_haproxys_bounds() -> None:
    assert HealthConfig().spread_checks == 0
    with pytest.raises(ConfigError, match="--spread-checks"):
        Config(health=HealthConfig(spread_checks=51)).validate()
    Config(health=HealthConfig(spread_checks=50)).validate()


# -- the monitor on a virtual clock -----------------------------------------------------------


@contextmanager
def virtual_time() -> Iterator[None]:
    """The running loop on a virtual clock: when nothing is ready, time jumps to the next
    timer instead of waiting for it (no sockets may be used meanwhile)."""
    loop: Any = asyncio.get_running_loop()
    selector = loop._selector
    real_select = selector.select
    now = [loop.time()]

    def select(timeout: float | None = None) -> list[Any]:
        events: list[Any] = real_select(0)
        if events:
            return events
        if timeout is None:
            raise RuntimeError("virtual time: nothing scheduled, the test would hang")
        now[0] += timeout
        return []

    loop.time = lambda: now[0]
    selector.select = select
    try:
        yield
    finally:
        del loop.time
        del selector.select


class Recorder:
    """A probe that records (loop time, url) and answers from ``answers`` (default pass)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        self.answers: dict[str, bool] = {}
        self.hold: dict[str, asyncio.Event] = {}
        self.changed = asyncio.Event()
        self.cancelled: list[str] = []

    async def __call__(self, url: str) -> bool:
        self.calls.append((asyncio.get_running_loop().time(), url))
        self.changed.set()
        held = self.hold.get(url)
        if held is not None:
            try:
                await held.wait()
            except asyncio.CancelledError:
                self.cancelled.append(url)
                self.changed.set()
                raise
        return self.answers.get(url, True)

    def times(self, url: str) -> list[float]:
        return [t for t, u in self.calls if u == url]

    async def until(self, predicate: Any) -> None:
        while not predicate():
            self.changed.clear()
            await self.changed.wait()


def up_pool(n: int, **pool_args: Any) -> Pool:
    pool = Pool(make_family("hashring"), **pool_args)
    for i in range(n):
        join(pool, f"S{i}")
    return pool


def join(pool: Pool, name: str, backend_id: str = "") -> Replica:
    member = pool.get(name) or pool.add(name)
    pool.set_handle(member, ReplicaHandle(name, f"http://{name}", backend_id or name))
    pool.mark_up(member)
    return member


def monitor_for(
    pool: Pool,
    recorder: Recorder,
    downs: list[tuple[str, str]] | None = None,
    *,
    probe: Probe | None = None,
    **health: Any,
) -> HealthMonitor:
    sink = downs if downs is not None else []
    return HealthMonitor(
        pool,
        None,  # type: ignore[arg-type]  # the recorder is the probe: no HTTP
        HealthConfig(**{"interval": 1.0, **health}),
        lambda replica, why: sink.append((replica.name, why)),
        probe=probe if probe is not None else recorder,
        rng=random.Random(1),
    )


@contextmanager
def running(monitor: HealthMonitor) -> Iterator[asyncio.Task[None]]:
    task = asyncio.get_running_loop().create_task(monitor.run())
    try:
        yield task
    finally:
        task.cancel()


async def test_probes_are_spread_over_the_interval_not_sent_in_one_burst() -> None:
    pool = up_pool(10)
    recorder = Recorder()
    monitor = monitor_for(pool, recorder)
    with virtual_time(), running(monitor) as task:
        await recorder.until(lambda: len(recorder.calls) >= 30)
        t0 = recorder.calls[0][0]
        starts = [t - t0 for t, _ in recorder.calls[:30]]
        # HAProxy's start: replica i at i/10 of the interval, then each on its own phase.
        assert starts == pytest.approx([k / 10 for k in range(30)])
        assert [u for _, u in recorder.calls[:10]] == [f"http://S{i}" for i in range(10)]
        for i in range(10):
            times = recorder.times(f"http://S{i}")
            assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx(
                [1.0] * (len(times) - 1)
            )
        assert monitor.rounds >= 2 and monitor.failures == 0
        task.cancel()


async def test_a_new_replica_is_probed_within_the_interval_between_two_others() -> None:
    pool = up_pool(4)
    recorder = Recorder()
    monitor = monitor_for(pool, recorder)
    with virtual_time(), running(monitor):
        await recorder.until(lambda: len(recorder.calls) >= 6)
        loop = asyncio.get_running_loop()
        joined_at = loop.time()
        join(pool, "S4")
        await recorder.until(lambda: recorder.times("http://S4"))
        first = recorder.times("http://S4")[0]
        assert first < joined_at + 1.0  # not a whole interval later (HAProxy's dynamic servers)
        await recorder.until(lambda: len(recorder.times("http://S4")) >= 3)
        # Its phase lies between two others', at least an eighth of the interval from each.
        phases = sorted(recorder.times(f"http://S{i}")[-1] % 1.0 for i in range(5))
        gaps = [b - a for a, b in zip(phases, [*phases[1:], phases[0] + 1.0], strict=True)]
        assert min(gaps) >= 0.125 - 1e-9


async def test_fall_misses_of_one_incarnation_report_it_down_once() -> None:
    pool = up_pool(3)
    recorder = Recorder()
    recorder.answers["http://S1"] = False
    downs: list[tuple[str, str]] = []
    monitor = monitor_for(pool, recorder, downs, fall=2)
    with virtual_time(), running(monitor):
        await recorder.until(lambda: len(recorder.times("http://S1")) >= 2)
        await recorder.until(lambda: len(recorder.calls) >= 6)
        assert downs == [("S1", "missed 2 heartbeats")]
        assert monitor.failures == 2


async def test_a_late_miss_of_a_replaced_incarnation_is_dropped_in_the_loop() -> None:
    """With --fall 1 a miss of the dead incarnation must not take its replacement off."""
    pool = up_pool(2)
    recorder = Recorder()
    recorder.answers["http://S1"] = False
    recorder.hold["http://S1"] = release = asyncio.Event()
    downs: list[tuple[str, str]] = []
    monitor = monitor_for(pool, recorder, downs, fall=1)
    with virtual_time(), running(monitor):
        await recorder.until(lambda: recorder.times("http://S1"))  # incarnation 1's probe waits
        member = pool.get("S1")
        assert member is not None and pool.mark_down(member, "died")
        pool.set_handle(member, ReplicaHandle("S1", "http://S1-new", "S1-2"))
        pool.mark_up(member)
        release.set()  # now incarnation 1's miss arrives
        await recorder.until(lambda: len(recorder.times("http://S1-new")) >= 2)
        assert downs == [] and member.state is ReplicaState.UP


async def test_an_ejected_replica_is_readmitted_by_a_passing_probe() -> None:
    pool = up_pool(3, eject_after=1, max_eject_percent=100)
    member = pool.get("S2")
    assert member is not None
    pool.note_failure(member, "reset")
    assert member.state is ReplicaState.EJECTED
    recorder = Recorder()
    monitor = monitor_for(pool, recorder)
    with virtual_time(), running(monitor):
        await recorder.until(lambda: recorder.times("http://S2"))
        assert member.state is ReplicaState.UP


async def test_cancelling_the_monitor_stops_the_probes_in_flight() -> None:
    pool = up_pool(3)
    recorder = Recorder()
    for i in range(3):
        recorder.hold[f"http://S{i}"] = asyncio.Event()  # never answer
    monitor = monitor_for(pool, recorder)
    with virtual_time(), running(monitor) as task:
        await recorder.until(lambda: len(recorder.calls) == 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sorted(recorder.cancelled) == [f"http://S{i}" for i in range(3)]


async def test_a_replica_that_leaves_is_no_longer_probed() -> None:
    pool = up_pool(3)
    recorder = Recorder()
    monitor = monitor_for(pool, recorder)
    with virtual_time(), running(monitor):
        await recorder.until(lambda: len(recorder.calls) >= 3)
        pool.remove("S0")
        seen = len(recorder.times("http://S0"))
        await recorder.until(lambda: len(recorder.times("http://S1")) >= 4)
        assert len(recorder.times("http://S0")) == seen


async def test_a_replica_removed_between_two_looks_is_never_probed() -> None:
    """40 replicas 25 ms apart, the monitor looking for leavers every 100 ms: S2 leaves at
    S1's probe (25 ms), before the next look and before its own probe is due (50 ms)."""
    pool = up_pool(40)
    recorder = Recorder()

    async def probe(url: str) -> bool:
        if url == "http://S1" and "S2" in pool:
            pool.remove("S2")
        return await recorder(url)

    monitor = monitor_for(pool, recorder, probe=probe)
    with virtual_time(), running(monitor):
        await recorder.until(lambda: len(recorder.times("http://S3")) >= 2)
        assert "S2" not in pool
        assert recorder.times("http://S2") == []


async def test_a_probe_slower_than_the_interval_is_followed_at_once_not_overlapped() -> None:
    pool = up_pool(2)
    recorder = Recorder()
    recorder.hold["http://S0"] = release = asyncio.Event()
    monitor = monitor_for(pool, recorder, timeout=5.0)
    with virtual_time(), running(monitor):
        # S1 is probed every interval while S0's first probe hangs: S0 is not probed again.
        await recorder.until(lambda: len(recorder.times("http://S1")) >= 3)
        assert len(recorder.times("http://S0")) == 1
        del recorder.hold["http://S0"]
        released_at = asyncio.get_running_loop().time()
        release.set()
        await recorder.until(lambda: len(recorder.times("http://S0")) >= 2)
        # Its next check was overdue: it follows at once, then keeps its fixed rate.
        assert recorder.times("http://S0")[1] == pytest.approx(released_at)
