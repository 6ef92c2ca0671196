"""How the heartbeat schedule bunches probes: control/health.py's CheckSchedule, simulated.

Run from the repository root (pure computation, a few seconds, no lock needed)::

    .venv/bin/python bench/heartbeat_spread.py                 # N = 100 and 1000, 1 s
    .venv/bin/python bench/heartbeat_spread.py --replicas 100 --spread 0,2,5 --minutes 1,10,60

The schedule is driven on a simulated clock exactly as the monitor drives it (each probe
answers 1 ms after it was sent). For the last simulated minute it reports the most probes
that start within one window (``--window``, 10 ms: about a probe's cost on the loop at
N = 100) and the share of probes that start a window holding 3 or more. The monitor before
the schedule sent all N at one instant every interval: N in one window.
"""

from __future__ import annotations

import argparse
import bisect
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lbproxy.control.health import CheckSchedule


def probe_starts(n: int, interval: float, pct: int, seconds: float, seed: int) -> list[float]:
    schedule: CheckSchedule[int] = CheckSchedule(interval, pct, random.Random(seed))
    schedule.start(list(range(n)), 0.0)
    starts: list[float] = []
    now = 0.0
    while now < seconds:
        for key, due in schedule.take_due(now):
            starts.append(due)
            schedule.done(key, due + 0.001)
        nxt = schedule.next_due()
        assert nxt is not None
        now = nxt
    return starts


def bunching(starts: list[float], since: float, window: float) -> tuple[int, float]:
    """(most probes starting within ``window``, share starting a window of >= 3)."""
    last = [t for t in starts if t >= since]
    # A window is half-open: probes exactly ``window`` apart are not in the same one.
    counts = [bisect.bisect_left(last, t + window - 1e-9) - i for i, t in enumerate(last)]
    return max(counts), sum(c >= 3 for c in counts) / len(counts)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--replicas", type=_ints, default=[100, 1000])
    p.add_argument("--spread", type=_ints, default=[0, 2, 5], help="--spread-checks values")
    p.add_argument("--minutes", type=_ints, default=[1, 10])
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--window", type=float, default=0.010)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    ms = args.window * 1000
    print(
        f"| N | --spread-checks | after | most probes in {ms:g} ms | "
        f"probes in a {ms:g} ms window of >= 3 |"
    )
    print("|---|---|---|---|---|")
    for n in args.replicas:
        for pct in args.spread:
            for minutes in args.minutes:
                seconds = minutes * 60.0
                starts = probe_starts(n, args.interval, pct, seconds, args.seed)
                most, crowded = bunching(starts, seconds - 60.0, args.window)
                print(f"| {n} | {pct} | {minutes} min | {most} | {crowded:.0%} |")


if __name__ == "__main__":
    main()
