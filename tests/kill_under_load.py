"""The kill-under-load drill the end-to-end tiers share (process, Docker).

A closed-loop load runs through the balancer; once it flows, the test's ``kill`` removes
one replica the hard way (SIGKILL, ``docker kill``); the drill then polls the test's
``replaced`` until the replacement serves, while the load goes on, and waits for the load
to end. The test asserts on the outcome: every request answered, how soon the replacement
served. Waits are on the load's meter and on ``replaced``, bounded only as hang guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lbproxy_tools.loadtest import LoadResult, Meter, make_ids, run_load
from tests.conftest import wait_for


@dataclass(frozen=True)
class Drill:
    result: LoadResult
    #: ``time.time()`` just before the kill (to compare with the balancer's event times).
    killed_at: float
    #: Seconds from the kill until ``replaced()`` first held; None if it never did.
    replaced_after: float | None


async def kill_under_load(
    url: str,
    *,
    kill: Callable[[], object],
    replaced: Callable[[], Awaitable[bool]],
    requests: int,
    concurrency: int,
    seed: int = 9,
    flowing: int = 200,
    replace_timeout: float = 15.0,
    poll: float = 0.05,
) -> Drill:
    """Kill a replica once ``flowing`` answers came back, watch for its replacement."""
    meter = Meter()
    load = asyncio.create_task(
        run_load(
            url,
            requests=requests,
            concurrency=concurrency,
            ids=make_ids("random", requests, seed),
            meter=meter,
        )
    )
    try:
        await wait_for(lambda: meter.done >= flowing, timeout=30)  # the load flows
        killed_at = time.time()
        killed = time.monotonic()
        kill()
        replaced_after: float | None = None
        while time.monotonic() - killed < replace_timeout:
            if await replaced():
                replaced_after = time.monotonic() - killed
                break
            await asyncio.sleep(poll)
        result = await load
    finally:
        if not load.done():  # the drill failed half-way: stop the load before raising
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
    return Drill(result, killed_at, replaced_after)
