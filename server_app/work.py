"""Optional per-request work for ``/home``, so that replicas can be the bottleneck.

The stock replica answers in well under a millisecond, so a benchmark of scaling (analysis
A-5, bench/autoscale.py) would measure the balancer and the client, not the pool. These
environment variables, all off by default (SPEC's replica unchanged), give ``/home`` a
service time:

- ``SERVER_DELAY_MS``: wait this long per request (an I/O-bound backend: a database call);
  costs no CPU, so many replicas fit on a small machine.
- ``SERVER_CPU_MS``: burn this much CPU per request (a CPU-bound backend).
- ``SERVER_CONCURRENCY``: serve at most this many ``/home`` requests at once; the rest
  wait in line inside the replica (a server with a fixed worker pool). With
  ``SERVER_DELAY_MS=D`` one replica then serves at most ``CONCURRENCY / D`` requests per
  second, the capacity an autoscaler has to add replicas for.

``/heartbeat`` never waits: a busy replica is slow, not dead.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field


def _number(env: Mapping[str, str], name: str) -> float:
    raw = env.get(name, "")
    if not raw:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"server_app: {name} must be a number, got {raw!r}") from None
    if not value >= 0:
        raise SystemExit(f"server_app: {name} must not be negative, got {raw!r}")
    return value


@dataclass(slots=True)
class Work:
    """What ``/home`` does before it answers; nothing by default."""

    delay: float = 0.0  # seconds waited per request
    cpu: float = 0.0  # seconds of CPU per request
    concurrency: int = 0  # requests served at once (0: no limit)
    _slots: asyncio.Semaphore | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.concurrency > 0:
            self._slots = asyncio.Semaphore(self.concurrency)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Work:
        return cls(
            delay=_number(env, "SERVER_DELAY_MS") / 1000,
            cpu=_number(env, "SERVER_CPU_MS") / 1000,
            concurrency=int(_number(env, "SERVER_CONCURRENCY")),
        )

    @property
    def active(self) -> bool:
        return self.delay > 0 or self.cpu > 0 or self.concurrency > 0

    async def perform(self) -> None:
        if self._slots is None:
            await self._once()
            return
        async with self._slots:
            await self._once()

    async def _once(self) -> None:
        if self.cpu > 0:
            end = time.thread_time() + self.cpu
            while time.thread_time() < end:
                pass
        if self.delay > 0:
            await asyncio.sleep(self.delay)
