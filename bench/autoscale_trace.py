"""Record what the autoscaler samples during a load step, for the decider's replay test.

A fixed pool of one A-5 replica (100 ms per request, 4 at once: 40 req/s at most) gets
20 req/s for 10 s, then 120 req/s for 3 s (open loop, ``run_load(schedule=...)``), while
``/lbproxy/metrics`` is read every 50 ms: the pool's in-flight requests (including the
backlog that builds up after the step), the requests answered and the sum of their
latencies. No autoscaler runs, so the backlog grows as it would before any decision.
The trace goes to ``tests/data/autoscale_step.json``; ``tests/test_autoscale_decider.py``
replays it into ``Decider`` on its own clock.

    flock /tmp/lbproxy-heavy.lock .venv/bin/python bench/autoscale_trace.py   # ~20 s

Only 127.0.0.1 is contacted; the balancer is stopped on any exit.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from lbproxy_tools.analysis.autoscale import CONCURRENCY, DELAY_MS, _balancer
from lbproxy_tools.launcher import checkout_revision
from lbproxy_tools.loadtest import make_ids, run_load, schedule_of

STEP, AFTER = 10.0, 3.0
BEFORE_RATE, AFTER_RATE = 20.0, 120.0
PROFILE = ((0.0, STEP, BEFORE_RATE, BEFORE_RATE), (STEP, STEP + AFTER, AFTER_RATE, AFTER_RATE))
EVERY = 0.05
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "autoscale_step.json"


def _sample(text: str) -> dict[str, float]:
    out = {"in_flight": 0.0, "answered": 0.0, "latency_sum": 0.0}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("lbproxy_replica_in_flight{"):
            out["in_flight"] += float(value)
        elif name == "lbproxy_request_duration_seconds_count":
            out["answered"] = float(value)
        elif name == "lbproxy_request_duration_seconds_sum":
            out["latency_sum"] = float(value)
    return out


async def main() -> None:
    times = schedule_of(PROFILE)
    samples: list[dict[str, float]] = []
    done = asyncio.Event()
    with _balancer(1) as url:
        async with aiohttp.ClientSession() as session:

            async def sampler() -> None:
                next_at = time.monotonic()
                while not done.is_set():
                    async with session.get(url + "/lbproxy/metrics") as r:
                        sample = _sample(await r.text())
                    sample["wall"] = time.time()
                    samples.append(sample)
                    next_at += EVERY
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))

            sampling = asyncio.create_task(sampler())
            result = await run_load(
                url,
                requests=len(times),
                concurrency=2500,
                ids=make_ids("sequential", len(times)),
                timeout=10.0,
                schedule=times,
                record=False,
            )
            done.set()
            await sampling
    step = result.started_at + STEP
    trace: dict[str, Any] = {
        "command": "flock /tmp/lbproxy-heavy.lock .venv/bin/python bench/autoscale_trace.py",
        "revision": checkout_revision(OUT.parents[2]),
        "replica": {"delay_ms": DELAY_MS, "concurrency": CONCURRENCY},
        "rate_before": BEFORE_RATE,
        "rate_after": AFTER_RATE,
        "fields": ["t (s after the step)", "in_flight", "answered", "latency_sum (s)"],
        "samples": [
            [
                round(s["wall"] - step, 4),
                s["in_flight"],
                int(s["answered"]),
                round(s["latency_sum"], 5),
            ]
            for s in samples
            if s["wall"] - step <= AFTER
        ],
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(trace, indent=None, separators=(",", ":")) + "\n")
    last = trace["samples"][-1]
    print(f"{len(trace['samples'])} samples to {OUT}; at +{last[0]:.2f} s: {last[1]:g} in flight")


if __name__ == "__main__":
    asyncio.run(main())
