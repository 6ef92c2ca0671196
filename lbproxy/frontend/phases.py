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
- ``relay``: response head until the last byte was handed to the client's transport;
- ``total``: first byte parsed until the last byte handed over: the request's whole time
  inside the balancer, whose p99 set against the client's p99 tells how much of the tail
  lies outside it (kernel socket buffers before we read, the client itself).

Before the first byte is parsed (issue 14's "accept to head parsed"):

- ``accept``: a connection accepted (``connection_made``, right after ``accept()``) until
  the first byte of its first request is parsed: the client's first send plus the time
  those bytes sat in the socket buffer before the loop read them. Time spent in the
  kernel's listen backlog, before ``accept()``, is not visible to the process
  (bench/tail.py samples the listener's queue with ``ss`` for that);
- ``gap``: on a keep-alive connection, the previous answer handed over (or the previous
  request read, when pipelined) until the next request's first byte is parsed: the
  client's turn-around plus the same socket-buffer wait.

Plus ``loop_lag``: how late the balancer's 250 ms sweep timer fires, sampled four times a
second; it measures how long one turn of the event loop (all ready callbacks) takes, i.e.
the wait every connection shares when the loop is saturated.

Off by default (``--phase-timings``): then the relay pays one ``is None`` test per mark.
On, it costs about six ``loop.time()`` calls and five bucket searches per request.
"""

from __future__ import annotations

import bisect

#: Phase names: the five a request passes between its first byte and its last in that
#: order, then ``loop_lag`` (separate), then the ones added for the accept-to-parse part
#: of the breakdown and the in-balancer total (appended so the old indexes hold).
PHASES = ("head", "pipeline", "acquire", "upstream", "relay", "loop_lag", "accept", "gap", "total")
HEAD, PIPELINE, ACQUIRE, UPSTREAM, RELAY, LOOP_LAG, ACCEPT, GAP, TOTAL = range(len(PHASES))
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
        start, end = marks[M_BEGIN], marks[M_DONE]
        if start and end:
            self.observe(TOTAL, end - start)

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
