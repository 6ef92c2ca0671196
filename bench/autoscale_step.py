"""Time to serving after a load step (issue 12): when each new replica was decided,
launched, up, and on the ring.

One autoscaled balancer (``--autoscale 1:10 --target-concurrency 3``, A-5's replicas:
100 ms per request, 4 at once) gets 20 req/s for 5 s, then 120 req/s for 15 s (open loop,
``run_load(schedule=...)``). Printed: every event from a second before the step, with its
time after the step, then the ring size and the UP count from ``/lbproxy/metrics`` every
0.1 s. The figure is the first ``scaled up`` (the new replicas on the ring); the target is
tick + one replica's start. A ``summary:`` line gives both (``summary``).

    flock /tmp/lbproxy-heavy.lock .venv/bin/python bench/autoscale_step.py   # ~30 s

Only 127.0.0.1 is contacted; the balancer is stopped on any exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

import aiohttp

from lbproxy_tools.analysis.autoscale import TARGET, _balancer
from lbproxy_tools.loadtest import make_ids, run_load, schedule_of

STEP = 5.0
PROFILE = ((0.0, STEP, 20.0, 20.0), (STEP, STEP + 15.0, 120.0, 120.0))
GAUGES = ("lbproxy_ring_size", 'lbproxy_replicas{state="up"}', "lbproxy_pool_target")


async def main(extra: list[str]) -> None:
    times = schedule_of(PROFILE)
    samples: list[tuple[float, tuple[float, ...]]] = []
    done = asyncio.Event()
    with _balancer(1, "--autoscale", "1:10", "--target-concurrency", str(TARGET), *extra) as url:
        async with aiohttp.ClientSession() as session:

            async def sampler() -> None:
                while not done.is_set():
                    with contextlib.suppress(aiohttp.ClientError, OSError):
                        async with session.get(url + "/lbproxy/metrics") as r:
                            text = await r.text()
                        values = dict.fromkeys(GAUGES, 0.0)
                        for line in text.splitlines():
                            name, _, value = line.rpartition(" ")
                            if name in values:
                                values[name] = float(value)
                        samples.append((time.time(), tuple(values.values())))
                    await asyncio.sleep(0.1)

            sampling = asyncio.create_task(sampler())
            result = await run_load(
                url,
                requests=len(times),
                concurrency=2500,
                ids=make_ids("sequential", len(times)),
                timeout=10.0,
                schedule=times,
                record=True,
            )
            done.set()
            await sampling
            async with session.get(url + "/lbproxy/events") as r:
                events = (await r.json())["message"]
    step = result.started_at + STEP
    failed = sum(1 for s in result.samples if s.outcome != "ok")
    print(f"failed {failed} of {len(times)}")
    for e in events:
        if e["time"] >= step - 1 and e["kind"] != "first_response":
            when = e["time"] - step
            print(f"{when:7.2f} {e['kind']:10s} {e['replica'] or ''} {e['detail'][:100]}")
    summary(events, step)
    last: tuple[float, ...] | None = None
    for wall, values in samples:
        if values != last and wall >= step - 0.5:
            ring, up, target = values
            print(f"{wall - step:7.2f} ring={ring:g} up={up:g} target={target:g}")
        last = values


def summary(events: list[dict[str, Any]], step: float) -> None:
    """The figures of docs/autoscale.md's table, in seconds after the step: the first
    scale-up decision, the new replicas' launches and heartbeats ("up", all at once: they
    join together), and the first "scaled up" event, which comes once the ring in use
    holds them (later scale-ups are left out). ``start`` is the slowest launch-to-up of the
    step's replicas in this run,
    so ``tick + start`` is the issue's target with the start measured under this load."""
    after = [e for e in events if e["time"] >= step]
    first = next(
        (e["time"] for e in after if e["kind"] == "autoscale" and "scaled up" in e["detail"]),
        None,
    )
    if first is not None:  # the step's own scale-up: what a later one does is not its figure
        after = [e for e in after if e["time"] <= first]

    def times(kind: str, prefix: str = "") -> list[float]:
        return [
            e["time"] - step for e in after if e["kind"] == kind and e["detail"].startswith(prefix)
        ]

    decided = [
        e["time"] - step
        for e in after
        if e["kind"] == "autoscale"
        and e["detail"].startswith("desired=")
        and not e["detail"].startswith("desired=1 ")
    ]
    launched, up, joined = times("launched"), times("up"), times("autoscale", "scaled up")
    if not (decided and launched and up and joined):
        print("summary: no scale-up after the step")
        return
    launch_of = {e["replica"]: e["time"] for e in after if e["kind"] == "launched"}
    start = max(
        e["time"] - launch_of.get(e["replica"], e["time"]) for e in after if e["kind"] == "up"
    )
    print(
        f"summary: decision {decided[0]:.2f} s, launched {min(launched):.2f}-"
        f"{max(launched):.2f} s, up {min(up):.2f} s, on the ring {joined[0]:.2f} s; "
        f"start (launched -> up) {start:.2f} s, tick + start {1.0 + start:.2f} s"
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
