"""The per-phase histograms behind --phase-timings (issue 14's breakdown)."""

from __future__ import annotations

import pytest

from lbproxy.frontend.phases import (
    ACQUIRE,
    BUCKETS,
    HEAD,
    M_ACQUIRED,
    M_BEGIN,
    M_DONE,
    M_HEAD,
    M_RESPONSE,
    M_STARTED,
    PHASES,
    RELAY,
    UPSTREAM,
    PhaseStats,
)

pytestmark = pytest.mark.unit


def test_marks_become_one_observation_per_reached_phase() -> None:
    stats = PhaseStats()
    marks = [0.0] * 6
    marks[M_BEGIN], marks[M_HEAD], marks[M_STARTED] = 10.0, 10.001, 10.001
    marks[M_ACQUIRED], marks[M_RESPONSE], marks[M_DONE] = 10.3, 10.31, 10.32
    stats.observe_marks(marks)
    snap = stats.snapshot()
    # head..relay once each; loop_lag, accept and gap are observed elsewhere; one total
    assert [snap[p]["count"] for p in PHASES] == [1, 1, 1, 1, 1, 0, 0, 0, 1]
    assert snap["total"]["sum"] == pytest.approx(0.32)
    assert snap["acquire"]["sum"] == pytest.approx(0.299)
    # 0.299 s lands in the 0.5 s bucket, not below it
    acquire = dict(snap["acquire"]["buckets"])  # type: ignore[call-overload]
    assert acquire["0.25"] == 0 and acquire["0.5"] == 1 and acquire["+Inf"] == 1
    assert stats.counts[HEAD][BUCKETS.index(0.001)] == 1


def test_unreached_phases_are_skipped() -> None:
    """A request the balancer answered itself (no replica) has no upstream/relay phase."""
    stats = PhaseStats()
    marks = [0.0] * 6
    marks[M_BEGIN], marks[M_HEAD], marks[M_STARTED], marks[M_DONE] = 1.0, 1.0, 1.0, 1.5
    stats.observe_marks(marks)
    assert sum(stats.counts[ACQUIRE]) == sum(stats.counts[UPSTREAM]) == 0
    assert sum(stats.counts[RELAY]) == 0
