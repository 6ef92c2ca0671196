"""Load helpers for the end-to-end tests."""

from __future__ import annotations

import asyncio
import random

import aiohttp


async def steady_load(
    session: aiohttp.ClientSession,
    url: str,
    *,
    requests: int,
    concurrency: int,
    stop: asyncio.Event | None = None,
    path: str = "/home",
) -> dict[str, int]:
    """Send at most ``requests`` GET ``path`` with random ids; count outcomes by kind."""
    outcomes: dict[str, int] = {}
    queue = iter(range(requests))

    async def worker() -> None:
        for _ in queue:
            if stop is not None and stop.is_set():
                return
            try:
                async with session.get(
                    url + path,
                    headers={"X-Request-ID": str(random.randint(100000, 999999))},
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as resp:
                    await resp.read()
                    kind = str(resp.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                kind = type(exc).__name__
            outcomes[kind] = outcomes.get(kind, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes
