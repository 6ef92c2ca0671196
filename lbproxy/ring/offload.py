"""Ring builds off the event loop, in a worker process.

A Maglev build walks millions of table entries; on the event loop it would stall every
request for its duration, and in a thread the GIL would still hand the loop only slices.
So the pool hands builds to one worker process (Envoy likewise builds its load-balancer
tables off the worker threads) and keeps serving from the current ring until the new one
arrives. The ring comes back pickled as a few flat arrays, so taking it in costs the loop a
memory copy, not a build.

The worker is started on first use with the ``spawn`` method (no copy of the balancer's
threads or sockets), is shared by every pool in the process (a balancer has one; a test
session has many, and the worker keeps its per-table-size rank tables between them), dies
with the balancer (the parent-death signal on Linux; otherwise it sees its pipe close and
``concurrent.futures`` stops it at exit) and is restarted if it dies on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from lbproxy.ring.base import Ring, RingFamily

__all__ = ["RingBuilder", "build_ring", "reopen", "shutdown"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _worker_init() -> None:  # pragma: no cover - runs in the worker process
    """Die with the balancer, leave Ctrl-C to it, and yield the CPU to it.

    A build keeps a core busy for up to seconds; at a lower priority it never preempts the
    balancer's event loop on a busy machine (measured: the loop's longest stall during an
    addition fell to what the scheduler costs it anyway; bench/churn.py --ring).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(10)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def build_ring(
    family: RingFamily, members: Mapping[str, int], weights: Mapping[str, int] | None
) -> Ring:
    """``family.build`` with weights when there are any (the worker's entry point)."""
    if weights:
        return family.build(members, weights)  # type: ignore[call-arg]
    return family.build(members)


_executor: ProcessPoolExecutor | None = None
#: Set by ``shutdown``: a build the shutdown broke ends as cancelled, with no new worker.
_closed = False


def _pool() -> ProcessPoolExecutor:
    global _executor
    if _closed:  # after shutdown nothing starts a worker: the build ends as cancelled
        raise asyncio.CancelledError
    if _executor is None:
        _executor = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
        )
    return _executor


def _discard(broken: ProcessPoolExecutor) -> None:
    global _executor
    if _executor is broken:
        _executor = None
    broken.shutdown(wait=False, cancel_futures=True)


def shutdown() -> None:
    """Stop the build worker now, a build in progress included.

    ``concurrent.futures`` would otherwise wait at interpreter exit for the build it is
    running (seconds for a large table) before the balancer process could end.
    """
    global _closed
    _closed = True
    executor = _executor
    if executor is None:
        return
    for process in list(getattr(executor, "_processes", {}).values()):
        with contextlib.suppress(OSError):
            process.terminate()
    _discard(executor)


def reopen() -> None:
    """Allow builds again after ``shutdown`` (tests; a process that serves twice)."""
    global _closed
    _closed = False


class RingBuilder:
    """Builds rings in the worker process; ``build`` awaits without blocking the loop."""

    def __init__(self) -> None:
        self.builds = 0

    async def build(
        self,
        family: RingFamily,
        members: Mapping[str, int],
        weights: Mapping[str, int] | None = None,
    ) -> Ring:
        """The ring over ``members``, built in the worker; restarts a worker that died once."""
        loop = asyncio.get_running_loop()
        args = (family, dict(members), dict(weights) if weights else None)
        for attempt in (1, 2):
            executor = _pool()
            try:
                ring = await loop.run_in_executor(executor, build_ring, *args)
            except BrokenProcessPool:
                if _closed:  # stopped on purpose at exit: no warning, no new worker
                    raise asyncio.CancelledError from None
                log.warning("the ring build worker died; starting another (attempt %d)", attempt)
                _discard(executor)
                if attempt == 2:
                    raise
                continue
            self.builds += 1
            return ring
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Nothing to release per builder: the worker is shared (see ``shutdown``)."""
