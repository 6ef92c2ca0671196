"""Heartbeat checks: one background task polls every live replica concurrently.

A replica that misses ``fall`` heartbeats in a row leaves the ring at once and the
reconciler replaces it; this is the second line of detection behind the backend's own
death events (a hung replica still runs, so only the heartbeat catches it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from lbproxy.config import HealthConfig
from lbproxy.control.pool import Incarnation, Pool, Replica, ReplicaState

log = logging.getLogger(__name__)


_DEFAULT_CHECK = HealthConfig()


async def probe(
    session: aiohttp.ClientSession,
    url: str,
    timeout: float,
    check: HealthConfig = _DEFAULT_CHECK,
) -> bool:
    """True when ``check.method url+check.path`` answers a status in ``check.status`` within
    ``timeout`` seconds. Redirects are not followed: like HAProxy's ``http-check``, the
    status range alone decides."""
    low, high = check.status
    try:
        async with session.request(
            check.method,
            url + check.path,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            await resp.read()
            return low <= resp.status <= high
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


class HealthMonitor:
    """Polls UP replicas every ``interval``; reports the ones that fall."""

    def __init__(
        self,
        pool: Pool,
        session: aiohttp.ClientSession,
        config: HealthConfig,
        on_down: Callable[[Replica, str], None],
    ) -> None:
        self._pool = pool
        self._session = session
        self._config = config
        self._on_down = on_down
        self.rounds = 0
        self.failures = 0

    async def check_once(self) -> None:
        """Probe every watched incarnation once; apply each answer to the one it came from.

        The round captures (member, incarnation) pairs: an answer that arrives after its
        incarnation died and was replaced is dropped, so with ``fall`` 1 a late miss of the
        dead process cannot take its healthy replacement off the ring.
        """
        watched = (ReplicaState.UP, ReplicaState.EJECTED)
        targets: list[tuple[Replica, Incarnation]] = [
            (r, r.incarnation)
            for r in self._pool.replicas()
            if r.state in watched and r.incarnation is not None
        ]
        if not targets:
            return
        results = await asyncio.gather(
            *(
                probe(self._session, inc.url, self._config.timeout, self._config)
                for _, inc in targets
            )
        )
        for (replica, incarnation), ok in zip(targets, results, strict=True):
            if replica.state not in watched or not self._pool.is_current(replica, incarnation):
                continue  # removed, died or replaced while we waited: not this one's result
            if ok:
                incarnation.fails = 0
                if replica.state is ReplicaState.EJECTED:
                    self._pool.readmit(replica)
                continue
            incarnation.fails += 1
            self.failures += 1
            if incarnation.fails >= self._config.fall:
                reason = f"missed {incarnation.fails} heartbeats"
                log.warning("replica %r %s; replacing it", replica.name, reason)
                self._pool.events.emit("heartbeat_down", replica.name, reason)
                self._on_down(replica, reason)
        self.rounds += 1

    async def run(self) -> None:
        """Check forever at a fixed rate (a slow round does not push the next one back)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self.check_once()
            except Exception:  # the monitor must outlive any bug in one round
                log.exception("heartbeat round failed")
            next_at += self._config.interval
            delay = next_at - loop.time()
            if delay < 0:
                next_at = loop.time()
                delay = 0
            await asyncio.sleep(delay)


async def wait_ready(
    session: aiohttp.ClientSession,
    url: str,
    *,
    rise: int,
    timeout: float,
    check_timeout: float,
    dead: Callable[[], bool],
    check: HealthConfig,
    poll: float = 0.05,
) -> bool:
    """Poll a new replica fast until ``rise`` heartbeats pass in a row; False on timeout/death.

    ``check`` has no default: a caller that forgot it probed ``/heartbeat`` whatever
    ``--health-path`` said (the Swarm reconciler did)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    passes = 0
    while loop.time() < deadline:
        if dead():
            return False
        left = min(check_timeout, max(0.05, deadline - loop.time()))
        if await probe(session, url, left, check):
            passes += 1
            if passes >= rise:
                return True
        else:
            passes = 0
        await asyncio.sleep(poll)
    return False
