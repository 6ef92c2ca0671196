"""Kill a replica under steady load and time the recovery, several runs, median reported.

    python bench/recovery.py --backend process --runs 5
    python bench/recovery.py --backend docker --runs 5     (images: make images)

Each run: steady load on /home (random 6-digit X-Request-IDs) through the balancer on
127.0.0.1; after 0.5 s one replica is killed (SIGKILL to its process, or `docker kill`);
the balancer's own event log (wall-clock times, same host clock) gives when it noticed,
when the replica left the ring, when the replacement launched, passed its heartbeat and
answered its first proxied request. Failed client requests are counted over the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lbproxy_tools.launcher import compose_stack, run_balancer  # noqa: E402
from lbproxy_tools.loadtest import make_ids, run_load  # noqa: E402

MILESTONES = (
    ("detected", ("died", "heartbeat_down")),
    ("off_ring", ("removed_from_ring",)),
    ("launched", ("launched",)),
    ("up", ("up",)),
    ("serving", ("first_response",)),
)


async def _events(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with session.get(url + "/lbproxy/events") as resp:
        events: list[dict[str, Any]] = (await resp.json())["message"]
        return events


async def one_run(url: str, victim: str, kill: Any, seed: int) -> dict[str, float]:
    """Kill ``victim`` under load; milestones in ms after the kill, plus failures."""
    async with aiohttp.ClientSession() as session:
        stop = asyncio.Event()
        load = asyncio.create_task(
            run_load(
                url,
                requests=200_000,
                concurrency=16,
                ids=make_ids("random", 20_000, seed),
                stop=stop,
            )
        )
        await asyncio.sleep(0.5)
        killed_at = time.time()
        kill(victim)
        marks: dict[str, float] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "serving" not in marks:
            await asyncio.sleep(0.05)
            for event in await _events(session, url):
                if event["replica"] != victim or event["time"] < killed_at:
                    continue
                for mark, kinds in MILESTONES:
                    if event["kind"] in kinds and mark not in marks:
                        marks[mark] = (event["time"] - killed_at) * 1000
        await asyncio.sleep(0.5)  # keep the load going a moment after recovery
        stop.set()
        result = await load
    marks["failed"] = float(sum(result.errors.values()))
    marks["requests"] = float(result.completed)
    return marks


@contextlib.contextmanager
def process_target() -> Iterator[tuple[str, Any, list[str]]]:
    with run_balancer("--heartbeat-interval", "1.0", "--log-level", "warning") as lb:
        import urllib.request

        def pid_of(name: str) -> int:
            import json

            with urllib.request.urlopen(lb.url + "/lbproxy/status") as resp:
                reps = json.loads(resp.read())["message"]["replicas"]
            return int(next(r["backend_id"] for r in reps if r["name"] == name))

        def kill(name: str) -> None:
            os.kill(pid_of(name), signal.SIGKILL)

        yield lb.url, kill, ["Server 1", "Server 2", "Server 3"]


@contextlib.contextmanager
def docker_target() -> Iterator[tuple[str, Any, list[str]]]:
    subprocess.run(["bash", "scripts/ensure-images.sh"], cwd=ROOT, check=True)
    with compose_stack(str(ROOT), project="lbproxy-recovery") as stack:
        deadline = time.monotonic() + 60
        while len(stack.replicas()) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)

        def kill(name: str) -> None:
            subprocess.run(
                ["docker", "kill", stack.replicas()[name]], check=True, capture_output=True
            )

        yield stack.url, kill, sorted(stack.replicas())
    stack.remove_leftovers()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("process", "docker"), default="process")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    target = process_target() if args.backend == "process" else docker_target()
    rows: list[dict[str, float]] = []
    with target as (url, kill, names):
        for run in range(args.runs):
            victim = names[run % len(names)]
            marks = asyncio.run(one_run(url, victim, kill, seed=run))
            rows.append(marks)
            time.sleep(1.0)
    cols = [m for m, _ in MILESTONES]
    print(f"\nbackend={args.backend} runs={args.runs}  (ms after the kill)")
    print("| run | " + " | ".join(cols) + " | requests | failed |")
    print("|---" * (len(cols) + 3) + "|")
    for i, row in enumerate(rows, 1):
        cells = [f"{row[c]:.0f}" if c in row else "-" for c in cols]
        print(f"| {i} | " + " | ".join(cells) + f" | {row['requests']:.0f} | {row['failed']:.0f} |")
    med = [
        f"{statistics.median(r[c] for r in rows if c in r):.0f}"
        if any(c in r for r in rows)
        else "-"
        for c in cols
    ]
    total_failed = sum(r["failed"] for r in rows)
    total = sum(r["requests"] for r in rows)
    print("| median | " + " | ".join(med) + f" | {total:.0f} | {total_failed:.0f} |")


if __name__ == "__main__":
    main()
