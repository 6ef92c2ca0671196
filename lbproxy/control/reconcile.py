"""Keeps the live replicas equal to the pool's members: launches, replaces, removes.

The only writer of membership and the only caller of the backend. Admin changes are
serialised by one lock and are all-or-nothing (a failed /add stops what it launched);
replacements of failed replicas run as one task per name, outside that lock, so a slow
/add never delays the recovery of a dead replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence

import aiohttp

from lbproxy.backends.base import BackendEvent, ReplicaBackend, ReplicaHandle
from lbproxy.config import MAX_POOL_SIZE, Config
from lbproxy.control.health import wait_ready
from lbproxy.control.pool import Pool, Replica, ReplicaState
from lbproxy.errors import BackendError, BadRequest, Conflict, LbproxyError, NotFound

log = logging.getLogger(__name__)

_RETRY_BASE = 0.5
_RETRY_MAX = 10.0
#: Unmatched death ids kept for launches in flight (Docker reports every stop as a death).
_DEAD_REMEMBERED = 256


class Reconciler:
    """Desired membership in, running replicas out."""

    def __init__(
        self,
        config: Config,
        pool: Pool,
        backend: ReplicaBackend,
        session: aiohttp.ClientSession,
    ) -> None:
        self._config = config
        self._pool = pool
        self._backend = backend
        self._session = session
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._replacing: dict[str, asyncio.Task[None]] = {}
        # Deaths that matched no incarnation yet (a launch may not have returned its id).
        self._dead: OrderedDict[str, None] = OrderedDict()
        self._retry_at: dict[str, float] = {}
        self._attempts: dict[str, int] = {}
        self._closing = False
        self.replacements = 0

    # -- signals from the backend and the health monitor ---------------------------------

    def on_death(self, event: BackendEvent) -> None:
        """The backend saw an incarnation die: take it off the ring now and replace it.

        Applied only to the incarnation the event names; a death of an older one (its
        replacement already runs) is dropped. An id that matches nothing yet may belong to
        a launch still in flight, so it is remembered (boundedly) for that launch to see.
        """
        replica = self._pool.get(event.name)
        incarnation = replica.incarnation if replica is not None else None
        if replica is None or incarnation is None or incarnation.backend_id != event.backend_id:
            self._note_unmatched_death(event.backend_id)
            return
        incarnation.dead = True
        self._pool.events.emit("died", replica.name, event.reason)
        if replica.state in (ReplicaState.UP, ReplicaState.EJECTED):
            self._pool.mark_down(replica, f"died: {event.reason}")
            self._wake.set()

    def _note_unmatched_death(self, backend_id: str) -> None:
        self._dead[backend_id] = None
        self._dead.move_to_end(backend_id)
        while len(self._dead) > _DEAD_REMEMBERED:
            self._dead.popitem(last=False)

    def on_heartbeat_down(self, replica: Replica, reason: str) -> None:
        if self._pool.mark_down(replica, reason):
            self._wake.set()

    # -- launching --------------------------------------------------------------------------

    async def _launch_ready(self, replica: Replica) -> ReplicaHandle:
        """Launch an incarnation of ``replica`` and wait for its heartbeats; stop it on failure."""
        handle = await self._backend.launch(replica.name, replica.ring_id)
        incarnation = self._pool.set_handle(replica, handle)
        if handle.backend_id in self._dead:
            del self._dead[handle.backend_id]
            incarnation.dead = True  # it died before launch() returned its id
        self._pool.events.emit("launched", replica.name, f"{handle.url} id={handle.backend_id}")
        try:
            ready = await wait_ready(
                self._session,
                handle.url,
                rise=self._config.health.rise,
                timeout=self._config.start_timeout,
                check_timeout=self._config.health.timeout,
                check=self._config.health,
                dead=lambda: incarnation.dead,
            )
            if not ready:
                why = (
                    "exited during startup"
                    if incarnation.dead
                    else f"did not answer {self._config.health.path} within "
                    f"{self._config.start_timeout:g}s"
                )
                raise BackendError(f"replica {replica.name!r} {why}")
        except BaseException:
            await asyncio.shield(self._stop_handle(handle, timeout=0.5))
            raise
        return handle

    async def _stop_handle(self, handle: ReplicaHandle, *, timeout: float) -> None:
        try:
            await self._backend.stop(handle, timeout=timeout)
        except Exception:
            log.exception("stopping replica %r (%s) failed", handle.name, handle.backend_id)
        finally:
            self._dead.pop(handle.backend_id, None)

    # -- startup --------------------------------------------------------------------------

    async def start(self, replicas: int) -> None:
        """Adopt the backend's running replicas of this pool, then launch up to ``replicas``."""
        async with self._lock:
            adopted = await self._backend.adopt()
            incarnations = []
            for handle in adopted:
                replica = self._pool.add(handle.name, handle.ring_id)
                incarnations.append(self._pool.set_handle(replica, handle))
                self._pool.events.emit("adopted", handle.name, handle.url)
            ready = await asyncio.gather(
                *(
                    wait_ready(
                        self._session,
                        inc.url,
                        rise=1,
                        timeout=self._config.start_timeout,
                        check_timeout=self._config.health.timeout,
                        check=self._config.health,
                        dead=lambda inc=inc: inc.dead,  # type: ignore[misc]
                    )
                    for inc in incarnations
                )
            )
            for handle, ok in zip(adopted, ready, strict=True):
                member = self._pool.get(handle.name)
                if member is None:
                    continue
                if ok:
                    self._pool.mark_up(member)
                else:
                    member.state = ReplicaState.DOWN
                    self._wake.set()
            missing = replicas - len(self._pool)
        if missing > 0:
            await self.add(missing, [])

    # -- operator changes -------------------------------------------------------------------

    def _generated_names(self, count: int, taken: set[str]) -> list[str]:
        prefix = self._backend.default_prefix
        names: list[str] = []
        k = 1
        while len(names) < count:
            name = f"{prefix}{k}"
            if name not in taken:
                names.append(name)
                taken.add(name)
            k += 1
        return names

    async def add(self, count: int, hostnames: Sequence[str]) -> None:
        """Launch ``count`` replicas (named ones first); all join the ring together or none do."""
        async with self._lock:
            if self._closing:
                raise BackendError("the balancer is shutting down", status=503)
            names = [self._backend.validate_name(h) for h in hostnames]
            if len(set(names)) != len(names):
                raise BadRequest("hostnames must be distinct")
            taken = [n for n in names if n in self._pool]
            if taken:
                raise Conflict(f"hostname(s) already in the pool: {', '.join(taken)}")
            if len(self._pool) + count > MAX_POOL_SIZE:
                raise BadRequest(
                    f"the pool would hold {len(self._pool) + count} replicas; "
                    f"the limit is {MAX_POOL_SIZE}"
                )
            names += self._generated_names(count - len(names), set(self._pool.names()) | set(names))
            if not names:
                return
            self._pool.check_placeable(names)
            replicas = [self._pool.add(name) for name in names]
            for replica in replicas:
                self._pool.events.emit("added", replica.name)
            results = await asyncio.gather(
                *(self._launch_ready(r) for r in replicas), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                started = [r for r in results if isinstance(r, ReplicaHandle)]
                await asyncio.gather(*(self._stop_handle(h, timeout=1.0) for h in started))
                self._pool.remove(*(r.name for r in replicas))
                first = errors[0]
                if isinstance(first, LbproxyError):
                    raise first
                raise BackendError(f"could not start replicas: {first}") from first
            self._pool.mark_up(*replicas)

    def _choose_removals(self, count: int, hostnames: Sequence[str]) -> list[Replica]:
        chosen: list[Replica] = []
        for name in hostnames:
            replica = self._pool.get(name) if isinstance(name, str) else None
            if replica is None:
                raise NotFound(f"hostname {name!r} is not in the pool")
            if replica in chosen:
                raise BadRequest("hostnames must be distinct")
            chosen.append(replica)
        if count > len(self._pool):
            raise BadRequest(f"cannot remove {count} replicas: the pool holds {len(self._pool)}")
        # Make up n with the replicas that cost least to lose: failed ones first, then the
        # most recently joined (highest ring id), so long-lived owners keep their keys.
        rest = [r for r in self._pool.replicas() if r not in chosen]
        rest.sort(key=lambda r: (r.state is ReplicaState.UP, -r.ring_id))
        chosen += rest[: count - len(chosen)]
        return chosen

    async def remove(self, count: int, hostnames: Sequence[str]) -> None:
        """Remove the named replicas, then others up to ``count``; drain, then stop them."""
        async with self._lock:
            chosen = self._choose_removals(count, hostnames)
            for replica in chosen:
                task = self._replacing.pop(replica.name, None)
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            self._pool.remove(*(r.name for r in chosen))
            for replica in chosen:
                self._retry_at.pop(replica.name, None)
                self._attempts.pop(replica.name, None)
                self._pool.events.emit("removed", replica.name)
            await asyncio.gather(*(self._drain_and_stop(r) for r in chosen))

    async def _drain_and_stop(self, replica: Replica) -> None:
        """Let in-flight requests finish (bounded), then stop the incarnation."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.stop_timeout
        while replica.in_flight > 0 and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if replica.handle is not None:
            await self._stop_handle(replica.handle, timeout=self._config.stop_timeout)
            self._pool.events.emit("stopped", replica.name)

    # -- replacement loop ---------------------------------------------------------------------

    async def _replace(self, replica: Replica) -> None:
        loop = asyncio.get_running_loop()
        name = replica.name
        try:
            old = replica.handle
            self._pool.events.emit("replacing", name, f"attempt {self._attempts.get(name, 0) + 1}")
            if old is not None:
                # Already dead or hung: no grace period, and the name must be free to reuse.
                await self._stop_handle(old, timeout=0.2)
            await self._launch_ready(replica)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            attempts = self._attempts.get(name, 0) + 1
            self._attempts[name] = attempts
            delay = min(_RETRY_MAX, _RETRY_BASE * 2 ** (attempts - 1))
            self._retry_at[name] = loop.time() + delay
            replica.state = ReplicaState.DOWN
            self._pool.events.emit("replace_failed", name, f"{exc}; retry in {delay:.1f}s")
            log.warning("replacing %r failed: %s (retry in %.1fs)", name, exc, delay)
            return
        finally:
            self._replacing.pop(name, None)
        self._attempts.pop(name, None)
        self._retry_at.pop(name, None)
        if self._pool.get(name) is replica:
            self._pool.mark_up(replica)
            self.replacements += 1

    def _schedule_replacements(self) -> None:
        now = asyncio.get_running_loop().time()
        for replica in self._pool.replicas():
            name = replica.name
            if (
                replica.state is ReplicaState.DOWN
                and name not in self._replacing
                and self._retry_at.get(name, 0.0) <= now
            ):
                self._replacing[name] = asyncio.create_task(self._replace(replica), name=name)

    async def run(self) -> None:
        """Replace DOWN members as soon as they are reported, and retry failed launches."""
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            self._wake.clear()
            if not self._closing:
                self._schedule_replacements()

    async def close(self) -> None:
        """Stop replacing, then stop every replica the pool holds (drained, in parallel)."""
        self._closing = True
        self._wake.set()
        tasks = list(self._replacing.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        async with self._lock:
            replicas = self._pool.replicas()
            self._pool.remove(*(r.name for r in replicas))
            await asyncio.gather(*(self._drain_and_stop(r) for r in replicas))
