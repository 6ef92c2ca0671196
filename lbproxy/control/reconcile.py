"""Keeps the live replicas equal to the pool's members: launches, replaces, removes, resyncs.

The only writer of membership and the only caller of the backend. Admin changes are
serialised by one lock and are all-or-nothing (a failed /add stops what it launched);
replacements of failed replicas run as one task per name, outside that lock, so a slow
/add never delays the recovery of a dead replica.

Events trigger, the list decides (Traefik's rule, Kubernetes' level-triggered
controllers): death events and heartbeats act at once, and a resync on start, after the
backend's event stream reconnects and every ``resync_interval`` seconds lists what runs and
converges on that list: members whose incarnation no longer runs are replaced, labelled
replicas of this pool that no member owns (orphans) are removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence

import aiohttp

from lbproxy.backends.base import RESYNC, BackendEvent, ReplicaBackend, ReplicaHandle
from lbproxy.config import MAX_POOL_SIZE, Config
from lbproxy.control.health import wait_ready
from lbproxy.control.pool import Pool, Replica, ReplicaState
from lbproxy.errors import BackendError, BadRequest, Conflict, LbproxyError, NotFound, ShuttingDown

log = logging.getLogger(__name__)

_RETRY_BASE = 0.5
_RETRY_MAX = 10.0
#: Unmatched death ids kept for launches in flight (Docker reports every stop as a death).
_DEAD_REMEMBERED = 256


def backoff_delay(attempts: int, rng: random.Random) -> float:
    """Seconds before retry ``attempts`` + 1: exponential with equal jitter.

    Half the exponential step is fixed, half drawn at random (the "equal jitter" of AWS's
    backoff study), so replicas that failed together (an engine hiccup) do not retry in
    lock-step, and no retry comes sooner than half the step.
    """
    step: float = min(_RETRY_MAX, _RETRY_BASE * 2.0 ** max(0, attempts - 1))
    return step / 2 + rng.uniform(0.0, step / 2)


class Reconciler:
    """Desired membership in, running replicas out."""

    def __init__(
        self,
        config: Config,
        pool: Pool,
        backend: ReplicaBackend,
        session: aiohttp.ClientSession,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._pool = pool
        self._backend = backend
        self._session = session
        self._rng = rng if rng is not None else random.Random()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._replacing: dict[str, asyncio.Task[None]] = {}
        # Deaths that matched no incarnation yet (a launch may not have returned its id).
        self._dead: OrderedDict[str, None] = OrderedDict()
        self._retry_at: dict[str, float] = {}
        self._attempts: dict[str, int] = {}
        self._launching: Counter[str] = Counter()  # names with a launch in flight
        self._live: dict[str, ReplicaHandle] = {}  # every incarnation not yet stopped, by id
        self._stopping_ids: set[str] = set()  # ids being stopped on purpose (not orphans)
        self._resync_wanted = True  # on start
        self._resync_task: asyncio.Task[None] | None = None
        self._admin_task: asyncio.Task[object] | None = None
        self._closing = False
        self.replacements = 0
        self.resyncs = 0
        self.orphans_removed = 0
        #: Told the URL of each incarnation that stopped (the front-end forgets its key).
        self.on_retired: Callable[[str], None] | None = None

    @property
    def closing(self) -> bool:
        return self._closing

    # -- signals from the backend and the health monitor ---------------------------------

    def on_death(self, event: BackendEvent) -> None:
        """The backend saw an incarnation die: take it off the ring now and replace it.

        Applied only to the incarnation the event names; a death of an older one (its
        replacement already runs) is dropped. An id that matches nothing yet may belong to
        a launch still in flight, so it is remembered (boundedly) for that launch to see.
        A RESYNC event (the backend's event stream reopened) asks for a resync.
        """
        if event.kind == RESYNC:
            self.request_resync()
            return
        replica = self._pool.get(event.name)
        incarnation = replica.incarnation if replica is not None else None
        if replica is None or incarnation is None or incarnation.backend_id != event.backend_id:
            if self._launching[event.name]:
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

    def request_resync(self) -> None:
        """List what runs soon (the loop does it; several requests make one resync)."""
        self._resync_wanted = True
        self._wake.set()

    # -- launching and stopping -------------------------------------------------------------

    async def _launch_ready(self, replica: Replica) -> ReplicaHandle:
        """Launch an incarnation of ``replica`` and wait for its heartbeats; stop it on failure."""
        name = replica.name
        self._launching[name] += 1
        try:
            handle = await self._backend.launch(name, replica.ring_id)
        finally:
            self._launching[name] -= 1
            if self._launching[name] <= 0:
                del self._launching[name]
        self._live[handle.backend_id] = handle
        incarnation = self._pool.set_handle(replica, handle)
        if handle.backend_id in self._dead:
            del self._dead[handle.backend_id]
            incarnation.dead = True  # it died before launch() returned its id
        self._pool.events.emit("launched", name, f"{handle.url} id={handle.backend_id}")
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
                raise BackendError(f"replica {name!r} {why}")
        except BaseException:
            await asyncio.shield(self._stop_handle(handle, timeout=0.0))
            raise
        return handle

    async def _stop_handle(self, handle: ReplicaHandle, *, timeout: float) -> None:
        """Stop one incarnation; it stays in ``_live`` until the backend confirmed the stop."""
        self._stopping_ids.add(handle.backend_id)
        try:
            await self._backend.stop(handle, timeout=timeout)
        except Exception:
            log.exception("stopping replica %r (%s) failed", handle.name, handle.backend_id)
        else:
            self._live.pop(handle.backend_id, None)
            if self.on_retired is not None and handle.url:
                self.on_retired(handle.url)
        finally:
            self._stopping_ids.discard(handle.backend_id)
            self._dead.pop(handle.backend_id, None)

    # -- startup --------------------------------------------------------------------------

    async def start(self, replicas: int) -> None:
        """Adopt what runs of this pool, then launch up to ``replicas``; serve what came up.

        Degraded boot: a replica that fails to start does not abort the balancer (a
        reconciler serves with what it has): its member stays DOWN and the replacement
        loop retries it with backoff. Adopted replicas beyond ``replicas`` are kept (they
        are the pool an earlier balancer left, /add included) and the log says so.
        """
        async with self._lock:
            adopted = await self._backend.adopt()
            incarnations = []
            for handle in adopted:
                replica = self._pool.add(handle.name, handle.ring_id)
                self._live[handle.backend_id] = handle
                incarnations.append(self._pool.set_handle(replica, handle))
                self._pool.events.emit("adopted", handle.name, handle.url)
            if len(adopted) > replicas:
                log.warning(
                    "adopted %d running replicas, more than --replicas=%d: keeping all %d "
                    "(an earlier balancer's pool, /add included); /rm shrinks it",
                    len(adopted),
                    replicas,
                    len(adopted),
                )
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
                names = self._generated_names(missing, set(self._pool.names()))
                members = [self._pool.add(name) for name in names]
                for member in members:
                    self._pool.events.emit("added", member.name)
                results = await asyncio.gather(
                    *(self._launch_ready(m) for m in members), return_exceptions=True
                )
                up = [m for m, r in zip(members, results, strict=True) if not _failed(r)]
                for member, result in zip(members, results, strict=True):
                    if _failed(result):
                        assert isinstance(result, BaseException)
                        if not isinstance(result, Exception):
                            raise result  # cancelled: the caller is shutting down
                        self._launch_failed(member, result)
                self._pool.mark_up(*up)
                await self._pool.settled()  # the ring is built off the loop
                if len(up) < len(members):
                    log.warning(
                        "serving with %d of %d replicas; the others are retried with backoff",
                        len(self._pool.ring.names),
                        len(self._pool),
                    )

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

    def names_ahead(self, count: int) -> list[str]:
        """The names an /add of ``count`` without hostnames would give its replicas now
        (the autoscaler has their ring built ahead: ``Pool.speculate``)."""
        return self._generated_names(count, set(self._pool.names()))

    async def set_weight(self, name: str, weight: int) -> Replica:
        """A member's weight (``PUT /lbproxy/weight``); here the pool is the only record.

        The Swarm reconciler writes it to the engine first, so that every balancer has it.
        """
        return self._pool.set_weight(name, weight)

    async def add(self, count: int, hostnames: Sequence[str], weight: int = 1) -> None:
        """Launch ``count`` replicas (named ones first); all join the ring together or none do.

        ``weight``: each new replica's share of the keys relative to weight-1 replicas.
        """
        async with self._lock:
            if self._closing:
                raise ShuttingDown("the balancer is shutting down")
            self._admin_task = asyncio.current_task()
            try:
                await self._add_locked(count, hostnames, weight)
            finally:
                self._admin_task = None

    async def _add_locked(self, count: int, hostnames: Sequence[str], weight: int = 1) -> None:
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
            replica.weight = weight
            self._pool.events.emit("added", replica.name)
        self._pool.prepare(replicas)  # their ring is built while they start
        try:
            results = await asyncio.gather(
                *(self._launch_ready(r) for r in replicas), return_exceptions=True
            )
        except BaseException:
            # Cancelled (shutdown): each launch undid itself; give the names back.
            await asyncio.shield(self._roll_back(replicas, []))
            raise
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            started = [r for r in results if isinstance(r, ReplicaHandle)]
            await asyncio.shield(self._roll_back(replicas, started))
            first = errors[0]
            if isinstance(first, LbproxyError):
                raise first
            if not isinstance(first, Exception):
                raise first
            raise BackendError(f"could not start replicas: {first}") from first
        self._pool.mark_up(*replicas)
        await self._pool.settled()  # answer once they are on the ring (built off the loop)

    async def _roll_back(self, replicas: list[Replica], started: list[ReplicaHandle]) -> None:
        await asyncio.gather(*(self._stop_handle(h, timeout=1.0) for h in started))
        self._pool.remove(*(r.name for r in replicas if self._pool.get(r.name) is r))

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
        # Ring ids are unique in a pool, so the order is deterministic: two Swarm balancers
        # asked the same /rm choose the same replicas.
        rest = [r for r in self._pool.replicas() if r not in chosen]
        rest.sort(key=lambda r: (r.state is ReplicaState.UP, -r.ring_id))
        chosen += rest[: count - len(chosen)]
        return chosen

    async def remove(self, count: int, hostnames: Sequence[str]) -> None:
        """Remove the named replicas, then others up to ``count``; drain, then stop them."""
        async with self._lock:
            self._admin_task = asyncio.current_task()
            try:
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
                    handle = replica.handle
                    if handle is not None and handle.backend_id in self._live:
                        self._stopping_ids.add(handle.backend_id)  # no orphan for a resync
                    self._pool.events.emit("removed", replica.name)
                await asyncio.gather(*(self._drain_and_stop(r) for r in chosen))
            finally:
                self._admin_task = None

    async def _drain_and_stop(self, replica: Replica, *, fast: bool = False) -> None:
        """Let in-flight requests finish (bounded), then stop the incarnation."""
        handle = replica.handle
        if handle is None or handle.backend_id not in self._live:
            return
        self._stopping_ids.add(handle.backend_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (0.0 if fast else self._config.stop_timeout)
        while replica.in_flight > 0 and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await self._stop_handle(handle, timeout=0.0 if fast else self._config.stop_timeout)
        self._pool.events.emit("stopped", replica.name)

    # -- replacement loop ---------------------------------------------------------------------

    def _launch_failed(self, replica: Replica, exc: Exception) -> None:
        """A launch of ``replica`` failed: DOWN, retried after a jittered backoff."""
        loop = asyncio.get_running_loop()
        name = replica.name
        attempts = self._attempts.get(name, 0) + 1
        self._attempts[name] = attempts
        delay = backoff_delay(attempts, self._rng)
        self._retry_at[name] = loop.time() + delay
        replica.state = ReplicaState.DOWN
        self._pool.events.emit("replace_failed", name, f"{exc}; retry in {delay:.1f}s")
        log.warning("starting %r failed: %s (retry in %.1fs)", name, exc, delay)

    async def _replace(self, replica: Replica) -> None:
        name = replica.name
        try:
            old = replica.handle
            self._pool.events.emit("replacing", name, f"attempt {self._attempts.get(name, 0) + 1}")
            if old is not None and old.backend_id in self._live:
                # Already dead or hung: no grace period, and the name must be free to reuse.
                await self._stop_handle(old, timeout=0.2)
            await self._launch_ready(replica)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._pool.get(name) is replica and not self._closing:
                self._launch_failed(replica, exc)
            return
        finally:
            if self._replacing.get(name) is asyncio.current_task():
                del self._replacing[name]
        self._attempts.pop(name, None)
        self._retry_at.pop(name, None)
        if self._pool.get(name) is replica and not self._closing:
            self._pool.mark_up(replica)
            self.replacements += 1

    def _schedule_replacements(self) -> None:
        if self._closing:
            return
        now = asyncio.get_running_loop().time()
        for replica in self._pool.replicas():
            name = replica.name
            if (
                replica.state is ReplicaState.DOWN
                and name not in self._replacing
                and self._retry_at.get(name, 0.0) <= now
            ):
                self._replacing[name] = asyncio.create_task(self._replace(replica), name=name)

    # -- resync: the list decides ------------------------------------------------------------

    async def resync(self) -> None:
        """List what runs and converge on it; safe beside launches, stops and events.

        A member whose current incarnation ran before the list was asked for, is not in
        it and has no launch in flight died unseen (a gap in the event stream): it goes
        DOWN and is replaced once. Whatever still answers at its address is not asked: a
        heartbeat cannot tell our replica from another process that took its port (or a
        container that took its IP), and the backend's list is what says what runs.
        A listed replica that no member's current incarnation is, that no launch in flight
        may still claim and that nobody is stopping already is an orphan (a crashed
        launch, a removed name an earlier balancer left): it is removed.
        """
        if self._closing:
            return
        # Incarnations as they were before the list: one launched while the list call was
        # in flight may be missing from the answer and must not be taken for dead.
        before = {r.name: r.incarnation for r in self._pool.replicas()}
        try:
            running = await self._backend.list()
        except LbproxyError as exc:
            log.warning("resync: listing replicas failed: %s", exc.message)
            return
        if self._closing:
            return
        self.resyncs += 1
        orphans: list[ReplicaHandle] = []
        for handle in running:
            member = self._pool.get(handle.name)
            if (
                handle.backend_id in self._stopping_ids
                or self._launching[handle.name]
                or (
                    member is not None
                    and member.handle is not None
                    and member.handle.backend_id == handle.backend_id
                )
            ):
                continue
            orphans.append(handle)
            self._stopping_ids.add(handle.backend_id)
        for handle in orphans:
            log.warning(
                "resync: removing orphan replica %r (%s): no member of the pool owns it",
                handle.name,
                handle.backend_id[:12],
            )
            self._pool.events.emit("stopped", handle.name, f"orphan {handle.backend_id[:12]}")
        self.orphans_removed += len(orphans)
        await asyncio.gather(*(self._stop_handle(h, timeout=0.0) for h in orphans))
        running_ids = {h.backend_id for h in running}
        suspects = [
            (replica, incarnation)
            for replica in self._pool.replicas()
            if (incarnation := replica.incarnation) is not None
            and before.get(replica.name) is incarnation
            and incarnation.backend_id not in running_ids
            and not self._launching[replica.name]
            and replica.state in (ReplicaState.UP, ReplicaState.EJECTED)
        ]
        # No heartbeat is asked to confirm (it used to be, and kept a replica the engine no
        # longer ran while its port answered for someone else). The process and Docker
        # backends list consistently (what launch() returned is listed until it stops), and
        # ``before`` leaves out an incarnation launched while the list was taken; the Swarm
        # backend, whose list is eventually consistent, has its own sync (control/swarm.py).
        for replica, incarnation in suspects:
            if self._closing or not self._pool.is_current(replica, incarnation):
                continue
            incarnation.dead = True
            reason = "no longer running (found by resync)"
            self._pool.events.emit("died", replica.name, reason)
            log.warning("replica %r %s; replacing it", replica.name, reason)
            self._pool.mark_down(replica, reason)
            self._wake.set()

    async def _resync_safely(self) -> None:
        try:
            await self.resync()
        except Exception:  # the loop must outlive any bug in one resync
            log.exception("resync failed")

    async def run(self) -> None:
        """Replace DOWN members as soon as they are reported, retry failed launches, resync."""
        loop = asyncio.get_running_loop()
        interval = self._config.resync_interval
        next_resync = loop.time()
        while not self._closing:
            timeout = max(0.0, min(0.5, next_resync - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            self._wake.clear()
            if self._closing:
                break
            resync_idle = self._resync_task is None or self._resync_task.done()
            if resync_idle and (self._resync_wanted or loop.time() >= next_resync):
                self._resync_wanted = False
                next_resync = loop.time() + interval
                self._resync_task = asyncio.create_task(self._resync_safely(), name="resync")
            self._schedule_replacements()

    # -- shutdown -----------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """From now on nothing is replaced, resynced or added; launches in flight are undone.

        Called first in the balancer's shutdown, before the front-end drains: a replica
        that dies during the drain stays dead.
        """
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        for task in list(self._replacing.values()):
            task.cancel()
        if self._resync_task is not None:
            self._resync_task.cancel()
        if self._admin_task is not None:
            self._admin_task.cancel()

    async def close(self, *, fast: bool = False) -> None:
        """Stop every replica the pool holds (drained, in parallel; ``fast``: killed now).

        Also stops any incarnation whose earlier stop was cut short (a forced shutdown
        cancels a graceful close half-way and calls this again with ``fast``).
        """
        self.begin_shutdown()
        tasks = [*self._replacing.values()]
        if self._resync_task is not None:
            tasks.append(self._resync_task)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if not fast:
            await self._lock.acquire()  # an /add in flight was cancelled: it rolls back
        try:
            replicas = self._pool.replicas()
            self._pool.remove(*(r.name for r in replicas))
            await asyncio.gather(*(self._drain_and_stop(r, fast=fast) for r in replicas))
            leftovers = list(self._live.values())
            await asyncio.gather(*(self._stop_handle(h, timeout=0.0) for h in leftovers))
        finally:
            if not fast:
                self._lock.release()


def _failed(result: object) -> bool:
    return isinstance(result, BaseException)
