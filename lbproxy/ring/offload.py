"""Ring builds off the event loop, in a worker process.

A Maglev build walks millions of table entries; on the event loop it would stall every
request for its duration, and in a thread the GIL would still hand the loop only slices.
So the pool hands builds to one worker process (Envoy likewise builds its load-balancer
tables off the worker threads) and keeps serving from the current ring until the new one
arrives. A Maglev ring's arrays (up to 25 MiB) come back through shared memory
(``lbproxy.ring.shared``): the worker writes them into a segment whose name the builder
chose, only a small descriptor crosses the pipe, and the loop maps the segment and uses
the arrays in place, so taking a ring in costs the loop a few system calls, not a copy.
(Pickled through the pipe, unpickling 25 MiB on the balancer's side stalled the loop about
20 ms at N = 1000.) Other rings, and any ring when the segment cannot be written, come back
pickled.

The worker remembers the last rank-order Maglev table it built (per table size): every
entry's owner, runner-up and their ranks, so the next build, usually one member more or
less, is derived from it in a pass or two over the table instead of a full build
(``lbproxy.ring.rankstate``). A new worker starts with nothing remembered: a full build.

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
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from lbproxy.ring import shared
from lbproxy.ring.base import Ring, RingFamily

__all__ = ["RingBuilder", "build_ring", "build_shared", "reopen", "shutdown"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _worker_init() -> None:  # pragma: no cover - runs in the worker process
    """Die with the balancer, leave signals to it, and yield the CPU to it.

    A build keeps a core busy for up to seconds; at a lower priority it never preempts the
    balancer's event loop on a busy machine (measured: the loop's longest stall during an
    addition fell to what the scheduler costs it anyway; bench/churn.py --ring).

    The worker leaves the balancer's process group: a SIGTERM sent to the group (a
    supervisor, a bench stopping ``lbproxy serve``) is for the balancer, whose shutdown
    stops the worker; taken by the worker too it broke a build in flight, and the balancer
    started another worker on its way out. The parent-death signal still ends it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
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


def build_shared(
    family: RingFamily,
    members: Mapping[str, int],
    weights: Mapping[str, int] | None,
    segment: str,
) -> Any:
    """The worker's entry point: the ring, its arrays in shared-memory ``segment`` when the
    ring can share them (a descriptor with ``attach``), else the ring itself (pickled)."""
    ring = _build_remembering(family, members, weights)
    share = getattr(ring, "share", None)
    if share is None:
        return ring
    try:
        return share(segment)
    except OSError:  # a full /dev/shm (Docker's is 64 MiB): the pipe still works
        return ring


#: In the worker: the state each family configuration's last build left (a rank-order
#: Maglev table's owners, runner-ups and their ranks, ``lbproxy.ring.rankstate``), from which
#: the next build of that configuration is derived when that is cheaper. Lost with the
#: worker (the next build is then a full one).
_states: dict[Any, Any] = {}
#: States kept (a balancer has one family; a test session's worker serves many).
_MAX_STATES = 2


def _build_remembering(
    family: RingFamily, members: Mapping[str, int], weights: Mapping[str, int] | None
) -> Ring:
    """``build_ring``, through the family's ``build_with_state`` where it has one."""
    build = getattr(family, "build_with_state", None)
    key = getattr(family, "state_key", None)
    if build is None or key is None:
        return build_ring(family, members, weights)
    previous = _states.pop(key, None)
    try:
        ring, state = build(previous, members, weights)
    except BaseException:
        # A refused member set (a bad weight, a full table) leaves the state as it was; a
        # derivation that failed half-way has spent it: the next build is a full one.
        if previous is not None and not getattr(previous, "spent", False):
            _states[key] = previous
        raise
    if state is not None:
        _states[key] = state  # the most recent last
        while len(_states) > _MAX_STATES:
            del _states[next(iter(_states))]
    built: Ring = ring
    return built


class _Segment:
    """One build's segment name and who removes it: the loop maps it (and so unlinks it) if
    it takes the result; otherwise whoever learns last that nobody will (the worker's
    result arriving after the caller gave up, a failed or broken build, a shutdown)."""

    def __init__(self) -> None:
        self.name = shared.new_name()
        self._lock = threading.Lock()
        self._abandoned = False
        self._taken = False
        _segments.add(self)

    def watch(self, future: Future[Any]) -> None:
        future.add_done_callback(self._done)  # runs in the executor's thread

    def _done(self, future: Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.drop()
            return
        with self._lock:
            abandoned = self._abandoned
        if abandoned:
            self.drop()

    def take(self, result: Any) -> Ring:
        """The ring from the worker's result (mapped in place when it was shared)."""
        with self._lock:
            self._taken = True
        _segments.discard(self)
        attach = getattr(result, "attach", None)
        if attach is None:
            return result  # type: ignore[no-any-return]
        ring: Ring = attach()
        return ring

    def abandon(self, future: Future[Any]) -> None:
        """The caller will not take the result: remove the segment now or when it exists."""
        with self._lock:
            self._abandoned = True
        if future.done():
            self.drop()

    def drop(self) -> None:
        with self._lock:
            if self._taken:
                return
        shared.discard(self.name)
        _segments.discard(self)


#: Segments of builds not yet taken or dropped (``shutdown`` removes them after the worker).
_segments: set[_Segment] = set()

_executor: ProcessPoolExecutor | None = None
#: Set by ``shutdown``: a build the shutdown broke ends as cancelled, with no new worker.
_closed = False


def _pool() -> ProcessPoolExecutor:
    global _executor
    if _closed:  # after shutdown nothing starts a worker: the build ends as cancelled
        raise asyncio.CancelledError
    if _executor is None:
        stale = shared.sweep_stale()  # segments of a balancer killed mid-build
        if stale:
            log.info("removed %d shared-memory ring segments of dead processes", stale)
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
    if executor is not None:
        processes = list(getattr(executor, "_processes", {}).values())
        for process in processes:
            with contextlib.suppress(OSError):
                process.terminate()
        for process in processes:  # dead before its segments go: it writes no new one
            with contextlib.suppress(OSError, ValueError, AssertionError):
                process.join(1.0)
        _discard(executor)
    for segment in list(_segments):
        segment.drop()


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
        args = (family, dict(members), dict(weights) if weights else None)
        for attempt in (1, 2):
            executor = _pool()
            segment = _Segment()
            future: Future[Any] | None = None
            try:
                future = executor.submit(build_shared, *args, segment.name)
                segment.watch(future)
                ring = segment.take(await asyncio.wrap_future(future))
            except BaseException as exc:
                if future is None:
                    segment.drop()
                else:
                    segment.abandon(future)
                if not isinstance(exc, BrokenProcessPool):
                    raise
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
