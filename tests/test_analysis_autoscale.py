"""A-5 inside `lbproxy analyze`: the open-loop schedule of the one load engine, the figures
A-5 derives from a run, and its report from a template (the run itself is `lbproxy analyze
--parts a5`, minutes long: a benchmark, not a test)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from lbproxy_tools.analysis import autoscale, report
from lbproxy_tools.analysis.autoscale import Run, analyse, parse_metrics
from lbproxy_tools.launcher import free_loopback_port
from lbproxy_tools.loadtest import make_ids, rate_at, run_load, schedule_of

STEP = [(0.0, 1.0, 10.0, 10.0), (1.0, 2.0, 50.0, 50.0), (2.0, 3.0, 50.0, 100.0)]


# -- the schedule ------------------------------------------------------------------------------


@pytest.mark.unit
def test_schedule_sends_what_the_profile_integrates_to() -> None:
    times = schedule_of(STEP)
    # 10 + 50 + 75 requests (a ramp from 50 to 100 over 1 s integrates to 75)
    assert abs(len(times) - 135) <= 1
    assert times == sorted(times) and 0.0 <= times[0] and times[-1] < 3.0
    assert sum(1 for t in times if t < 1.0) == 10
    assert rate_at(2.5, STEP) == pytest.approx(75.0) and rate_at(3.0, STEP) == 0.0


@pytest.mark.unit
def test_schedule_and_rate_are_exclusive_and_sized() -> None:
    async def call(**kwargs: object) -> None:
        await run_load("http://127.0.0.1:9", concurrency=1, ids=["1"], **kwargs)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="exclusive"):
        asyncio.run(call(requests=1, rate=1.0, schedule=[0.0]))
    with pytest.raises(ValueError, match="2 offsets for 3 requests"):
        asyncio.run(call(requests=3, schedule=[0.0, 0.1]))


@pytest.fixture
async def held_server() -> AsyncIterator[tuple[str, asyncio.Event, list[str]]]:
    """/home answers at once, /held only once the test sets the event; ids seen, in order."""
    release = asyncio.Event()
    seen: list[str] = []

    async def home(request: web.Request) -> web.Response:
        seen.append(request.headers["X-Request-ID"])
        return web.json_response({"message": "Hello from Server: S1", "status": "successful"})

    async def held(request: web.Request) -> web.Response:
        seen.append(request.headers["X-Request-ID"])
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/home", home)
    app.router.add_get("/held", held)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_loopback_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}", release, seen
    finally:
        release.set()
        await runner.cleanup()


@pytest.mark.inprocess
async def test_open_loop_requests_go_at_their_offsets(
    held_server: tuple[str, asyncio.Event, list[str]],
) -> None:
    url, _, seen = held_server
    times = [0.0, 0.05, 0.05, 0.1]
    result = await run_load(
        url, requests=4, concurrency=4, ids=make_ids("sequential", 4), schedule=times, record=True
    )
    assert result.ok == 4 and result.per_replica == {"S1": 4}
    assert sorted(seen) == make_ids("sequential", 4)
    by_index = {s.index: s for s in result.samples}
    for i, offset in enumerate(times):
        # sent is the scheduled time, on the wall clock of the run's start
        assert by_index[i].sent == pytest.approx(result.started_at + offset, abs=1e-6)


@pytest.mark.inprocess
async def test_latency_and_deadline_count_from_the_scheduled_time(
    held_server: tuple[str, asyncio.Event, list[str]],
) -> None:
    """One worker, two requests due at once, a server that never answers: the second request
    waits for the worker the whole timeout, so its deadline has passed when the worker is free.
    It fails as a timeout and its latency is at least the timeout (a closed-loop client would
    report it as sent late and fast: coordinated omission)."""
    url, _, _ = held_server
    timeout = 0.3
    result = await run_load(
        url,
        requests=2,
        concurrency=1,
        ids=["1", "2"],
        path="/held",
        timeout=timeout,
        schedule=[0.0, 0.0],
        record=True,
    )
    assert result.errors == {"TimeoutError": 2}
    second = next(s for s in result.samples if s.index == 1)
    assert second.latency >= timeout * 0.9


# -- A-5's figures -----------------------------------------------------------------------------


@pytest.mark.unit
def test_parse_metrics_keeps_pool_sizes_and_in_flight() -> None:
    text = "\n".join(
        [
            "# HELP lbproxy_replicas replicas by state",
            'lbproxy_replicas{state="up"} 3.0',
            "lbproxy_pool_target 4.0",
            "lbproxy_autoscale_desired_replicas 5.0",
            'lbproxy_autoscale_observed_concurrency{window="stable"} 7.5',
            'lbproxy_replica_in_flight{replica="Server 1"} 2.0',
            'lbproxy_replica_in_flight{replica="Server 2"} 6.0',
            "lbproxy_queued_total 120.0",
            "lbproxy_queue_redispatched_total 75.0",
            "lbproxy_queue_timeouts_total 0.0",
        ]
    )
    assert parse_metrics(text) == {
        "ready": 3.0,
        "actual": 4.0,
        "desired": 5.0,
        "stable": 7.5,
        "in_flight_sum": 8.0,
        "in_flight_max": 6.0,
        "queued": 120.0,
        "redispatched": 75.0,
        "queue_timeouts": 0.0,
    }


PROFILE = [
    (0.0, 10.0, 20.0, 20.0),
    (10.0, 35.0, 120.0, 120.0),
    (35.0, 45.0, 120.0, 240.0),
    (45.0, 70.0, 240.0, 240.0),
    (70.0, 90.0, 40.0, 40.0),
]


def _run(name: str, *, failed_at: float | None = None, scaled: bool = True) -> Run:
    run = Run(name, [], t0=1000.0)
    for k in range(900):
        at = k / 10
        run.sent.append(at)
        run.latency.append(0.1 if at < 50 else 0.2)
        run.ok.append(failed_at is None or not (failed_at <= at < failed_at + 1))
    run.outcome = {"ok": sum(run.ok), "503": 900 - sum(run.ok)}
    run.samples = [
        {"t": t / 2, "ready": min(10.0, 1.0 + t / 8), "in_flight_sum": 3.0} for t in range(180)
    ]
    if scaled:  # the queue counters at the end (the last sample, taken after the load)
        run.samples[-1].update(queued=1234.0, redispatched=567.0, queue_timeouts=0.0)
    if scaled:
        run.events = [
            {"time": 1000.0 + 10.4, "kind": "autoscale", "detail": "desired=3 actual=1 mode=panic"},
            {
                "time": 1000.0 + 14.0,
                "kind": "autoscale",
                "detail": "scaled up by 2: actual=3 ready=3",
            },
            {"time": 1000.0 + 82.0, "kind": "autoscale", "detail": "scaled down 10 -> 9"},
            {"time": 1000.0 + 14.0, "kind": "up", "detail": "Server 2"},
        ]
    return run


@pytest.mark.unit
def test_analyse_finds_the_reaction_and_the_settled_tail() -> None:
    r = analyse(_run("autoscaled", failed_at=12.0), PROFILE)
    assert r["total"] == {"requests": 900, "failed": 10, "p50_ms": 100.0, "p99_ms": 200.0}
    assert [p["failed"] for p in r["phases"]] == [0, 10, 0, 0, 0]
    assert r["settled_peak"]["requests"] == 125 and r["settled_peak"]["p99_ms"] == 200.0
    assert r["step_decision_s"] == pytest.approx(0.4)
    assert r["step_serving_s"] == pytest.approx(4.0)
    assert r["scale_changes"] == 2
    assert [c["changes"] for c in r["changes_in_constant_load"]] == [0, 0]
    assert r["ready_at"] == {"2": 4.0, "4": 12.0, "8": 28.0, "10": 36.0}
    assert r["queue"] == {"queued": 1234, "redispatched": 567, "queue_timeouts": 0}
    fixed = analyse(_run("fixed 10", scaled=False), PROFILE)
    assert "step_decision_s" not in fixed and math.isnan(fixed["max_desired"] or math.nan)
    assert fixed["queue"] == {}


@pytest.mark.unit
def test_a5_report_words_the_figures_from_a_template() -> None:
    runs = [
        analyse(_run("autoscaled", failed_at=12.0), PROFILE),
        analyse(_run(f"fixed {autoscale.MAX}", scaled=False), PROFILE),
        analyse(_run(f"fixed {autoscale.MIN}", failed_at=20.0, scaled=False), PROFILE),
    ]
    cold = {"status": 200, "client_ms": 585.0, "held_ms": 480.0, "decision_ms": 1.0,
            "launched_ms": 13.0, "up_ms": 480.0}  # fmt: skip
    results = {
        "command": "lbproxy analyze --parts a5",
        "revision": "abc1234",
        "machine": {"cpus": 2, "load_start": 1.0, "load_end": 2.0},
        "replica": {"delay_ms": 100, "concurrency": 4},
        "profile": PROFILE,
        "quick": False,
        "runs": runs,
        "cold_starts": [cold, cold],
    }
    text = report.render_a5(results)
    assert "| failed | 10 (503: 10) | 10 (503: 10) | 0 |" in text
    assert "**not met**, 10 of 900 failed (503: 10), 10 in 10-35 s." in text
    assert "scale-up decision within one tick (<= 2 s)**: yes, 0.40 s." in text
    assert "yes, 200 ms against 200 ms for the fixed pool of 10 (1.00x)" in text
    assert "the first scale-down after it came at 82.0 s" in text
    assert "yes, no two scale changes within one stable window (20 s) under the same" in text
    assert "| the client's whole request | 585 | 585 | **585** |" in text
    assert "redispatched to another replica on a ring change" in text
    assert "the pool was at the size the step asked for (3 replicas) 4.00 s after the step" in text
    assert "| 1,234 / 567 / 0 | - | - |" in text
    assert "{{" not in text and "{%" not in text


@pytest.mark.unit
def test_a5_report_calls_two_changes_within_a_window_under_constant_load_flapping() -> None:
    """Issue 12: "under a constant load, at most one scale change per stabilisation window".
    Two scale-ups 3.5 s apart on the plateau (ce8332f's 7 -> 8 -> 10) broke it, and so do
    two scale-ups answering one step; changes in a ramp (the load not constant) do not."""
    events = [
        (12.5, "scaled up by 1: actual=2 ready=2"),
        (13.8, "scaled up by 2: actual=4 ready=4"),
        (36.0, "scaled up by 1: actual=5 ready=5"),
        (39.0, "scaled up by 1: actual=6 ready=6"),
        (49.7, "scaled up by 2: actual=8 ready=8"),
        (53.2, "scaled up by 2: actual=10 ready=10"),
        (75.0, "scaled down by 2: actual=8 ready=8"),
    ]
    crowded = report._crowded_changes(events, PROFILE, 20.0)
    assert [(x["t1"], x["t2"], x["rate"]) for x in crowded] == [
        (12.5, 13.8, 120.0),
        (49.7, 53.2, 240.0),
    ]
    assert report._crowded_changes(events, PROFILE, 1.0) == []


@pytest.mark.unit
def test_parts_select_task4_a5_or_both() -> None:
    import argparse

    from lbproxy_tools.analysis import _parts

    assert _parts("a5") == ["a5"]
    assert _parts("all") == ["a1-a4", "a5"]
    assert _parts("a5, A1-A4") == ["a1-a4", "a5"]  # in run order, whatever the order given
    with pytest.raises(argparse.ArgumentTypeError, match="unknown part a3"):
        _parts("a3")
