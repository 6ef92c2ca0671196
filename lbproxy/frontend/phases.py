"""Where a request waits inside the balancer: per-phase latency histograms (opt-in).

Issue 14 asks where the tail comes from at 1,500 connections. A request's life in the
relay splits into phases separated by marks the relay takes with ``loop.time()``:

- ``head``: first byte of the request parsed until its head is complete (slow clients,
  and event-loop lag while other work runs between reads);
- ``pipeline``: head complete until the request is at the head of its connection's queue
  (pipelined requests wait for the one before them);
- ``acquire``: until an upstream connection is in hand (idle pool hit, the per-replica
  FIFO queue, or a TCP connect, retries included);
- ``upstream``: request written until the replica's response head is parsed (the
  replica's own queueing and work, plus our loop lag before we read the answer);
- ``relay``: response head until the last byte was handed to the client's transport.

Plus ``loop_lag``: how late the balancer's 250 ms sweep timer fires, sampled four times a
second; it measures how long one turn of the event loop (all ready callbacks) takes, i.e.
the wait every connection shares when the loop is saturated.

Off by default (``--phase-timings``): then the relay pays one ``is None`` test per mark.
On, it costs about six ``loop.time()`` calls and five bucket searches per request.
"""

from __future__ import annotations

import bisect

#: Phase names, in the order a request passes them (``loop_lag`` is separate).
PHASES = ("head", "pipeline", "acquire", "upstream", "relay", "loop_lag")
HEAD, PIPELINE, ACQUIRE, UPSTREAM, RELAY, LOOP_LAG = range(len(PHASES))
#: Bucket bounds in seconds: fine at the bottom (the common case is tens of microseconds).
BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.0,
    5.0,
)

#: Indexes into an exchange's mark list (a list of loop times, 0.0 = not reached).
M_BEGIN, M_HEAD, M_STARTED, M_ACQUIRED, M_RESPONSE, M_DONE = range(6)


class PhaseStats:
    """Cumulative-on-export histograms, one per phase; plain lists of ints on the hot path."""

    __slots__ = ("counts", "sums")

    def __init__(self) -> None:
        self.counts = [[0] * (len(BUCKETS) + 1) for _ in PHASES]
        self.sums = [0.0] * len(PHASES)

    def observe(self, phase: int, seconds: float) -> None:
        if seconds < 0.0:
            seconds = 0.0
        self.counts[phase][bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[phase] += seconds

    def observe_marks(self, marks: list[float]) -> None:
        """Record one finished exchange; phases whose start or end was never reached are
        skipped (a request answered by the balancer itself has no upstream phase)."""
        for phase, (a, b) in enumerate(
            (
                (M_BEGIN, M_HEAD),
                (M_HEAD, M_STARTED),
                (M_STARTED, M_ACQUIRED),
                (M_ACQUIRED, M_RESPONSE),
                (M_RESPONSE, M_DONE),
            )
        ):
            start, end = marks[a], marks[b]
            if start and end:
                self.observe(phase, end - start)

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Per phase: count, sum and cumulative bucket counts (JSON-friendly)."""
        out: dict[str, dict[str, object]] = {}
        for i, name in enumerate(PHASES):
            cumulative = 0
            buckets: list[tuple[str, int]] = []
            for bound, count in zip(BUCKETS, self.counts[i], strict=False):
                cumulative += count
                buckets.append((repr(bound), cumulative))
            cumulative += self.counts[i][-1]
            buckets.append(("+Inf", cumulative))
            out[name] = {"count": cumulative, "sum": self.sums[i], "buckets": buckets}
        return out
