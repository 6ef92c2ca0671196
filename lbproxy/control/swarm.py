"""Membership on Swarm: the engine's services are the pool; Swarm, not the balancer, replaces.

With ``--backend swarm`` this takes the reconciler's place (same public surface, so the
admin API, the views and the lifecycle are unchanged). What differs, and why:

- **The engine is the source of truth.** The pool is whatever replica services of this pool
  the engine lists, under their names and ring-id labels. Several balancers therefore hold
  the same members with the same ring ids and build the same ring. Engine events trigger a
  list; the list decides (Traefik's rule); a periodic list (``--swarm-sync-interval``) covers
  missed events and other nodes' task deaths.
- **Swarm replaces dead replicas** (its restart policy and rescheduling): the balancer only
  takes a dead task off the ring at once and puts the next task on when it passes a
  heartbeat. A *hung* replica still runs, so only heartbeats catch it: then the balancer
  asks Swarm to replace it (a forced service update, version-checked so that several
  balancers cause one replacement).
- ``/add`` creates services (unique names, ring ids claimed as Swarm configs: the engine's
  uniqueness guarantees, no home-made consensus) and answers once the new replicas pass a
  heartbeat; ``/rm`` drains, then removes the services and releases their ring ids.
- Weights are service labels: ``/add``'s ``"weight"`` is written at creation and ``PUT
  /lbproxy/weight`` updates the label, then the local ring; every list applies the labels,
  so all balancers (and a restarted one) hold the same weights.
- A balancer that stops leaves the replicas running (other balancers use them; a restarted
  one adopts them). `docker stack rm` or removing the services ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence

import aiohttp

from lbproxy.backends.base import BackendEvent, ReplicaBackend
from lbproxy.backends.swarm import SwarmBackend, SwarmReplica
from lbproxy.config import MAX_POOL_SIZE, Config
from lbproxy.control.health import wait_ready
from lbproxy.control.pool import Pool, Replica, ReplicaState
from lbproxy.control.reconcile import Reconciler
from lbproxy.errors import BackendError, BadRequest, Conflict, LbproxyError, NotFound, ShuttingDown

log = logging.getLogger(__name__)

#: A ring-id claim with no service this long after it was made is an orphan (a balancer
#: died between claiming and creating): released by the periodic sync.
_ORPHAN_CLAIM_AGE = 60.0
_CLAIM_GC_EVERY = 30


class SwarmReconciler(Reconciler):
    """Follows the engine's replica services; creates and removes them on /add and /rm."""

    def __init__(
        self,
        config: Config,
        pool: Pool,
        backend: ReplicaBackend,
        session: aiohttp.ClientSession,
    ) -> None:
        super().__init__(config, pool, backend, session)
        if not isinstance(backend, SwarmBackend):
            raise TypeError("SwarmReconciler drives a SwarmBackend")
        self._swarm = backend
        self._admin_lock = asyncio.Lock()
        self._sync_lock = asyncio.Lock()
        self._progress = asyncio.Condition()
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._forcing: dict[str, asyncio.Task[None]] = {}
        #: Names being removed by this balancer, and when each removal finished: a list
        #: taken before a removal finished must not bring the name back.
        self._removing: set[str] = set()
        self._removed_at: dict[str, float] = {}
        self._stopping = False
        self._syncs = 0
        self.forced_replacements = 0

    # -- signals ------------------------------------------------------------------------------

    def on_death(self, event: BackendEvent) -> None:
        """A task's container died on this node: off the ring now; Swarm starts the next."""
        replica = self._pool.get(event.name)
        incarnation = replica.incarnation if replica is not None else None
        if replica is None or incarnation is None or incarnation.backend_id != event.backend_id:
            return  # an older task of the service, or one this balancer never saw
        incarnation.dead = True
        self._pool.events.emit("died", replica.name, event.reason)
        self._pool.mark_down(replica, f"died: {event.reason}")

    def on_heartbeat_down(self, replica: Replica, reason: str) -> None:
        """A task missed its heartbeats: off the ring, and Swarm is asked to replace it."""
        handle = replica.handle
        if not self._pool.mark_down(replica, reason) or handle is None or self._stopping:
            return
        self._force(replica.name, handle.backend_id, reason)

    def _force(self, name: str, task_id: str, reason: str) -> None:
        if name in self._forcing:
            return

        async def force() -> None:
            try:
                if await self._swarm.force_update(name, task_id):
                    self.forced_replacements += 1
                    self._pool.events.emit("replacing", name, f"forced Swarm update ({reason})")
            except LbproxyError as exc:
                log.warning("could not force the replacement of %r: %s", name, exc.message)
            finally:
                self._forcing.pop(name, None)

        self._forcing[name] = asyncio.create_task(force(), name=f"force-{name}")

    # -- following the engine -------------------------------------------------------------------

    async def sync(self) -> None:
        """List the pool's services and tasks and make the pool match (one pass)."""
        async with self._sync_lock:
            started = asyncio.get_running_loop().time()
            replicas = await self._swarm.replicas()
            self._apply(replicas, started)
            self._syncs += 1
            if self._syncs % _CLAIM_GC_EVERY == 1:
                await self._release_orphan_claims(replicas)
        async with self._progress:
            self._progress.notify_all()

    def _apply(self, replicas: list[SwarmReplica], started: float) -> None:
        seen: set[str] = set()
        for found in replicas:
            name = found.name
            if name in self._removing or self._removed_at.get(name, -1.0) >= started:
                continue
            seen.add(name)
            member = self._pool.get(name)
            if member is None:
                member = self._pool.add(name, found.ring_id)
                member.weight = self._weight_of(found)  # not on the ring yet: no rebuild
                if member.ring_id != found.ring_id:
                    log.error(
                        "replica %r has ring id %d in the engine but %d here: ring ids clash",
                        name,
                        found.ring_id,
                        member.ring_id,
                    )
                self._pool.events.emit("adopted", name, f"ring id {found.ring_id}")
            elif member.weight != self._weight_of(found):
                # another balancer changed it (or this one, and the list caught up)
                self._pool.set_weight(name, self._weight_of(found))
            handle = found.handle
            if handle is None:
                # Swarm is (re)starting the task: nothing to send to until the next one runs.
                if member.incarnation is not None:
                    member.incarnation.dead = True
                if member.state in (ReplicaState.UP, ReplicaState.EJECTED, ReplicaState.STARTING):
                    self._pool.mark_down(member, "Swarm task not running")
                continue
            if member.handle is not None and member.handle.backend_id == handle.backend_id:
                continue
            if member.handle is not None:
                self.replacements += 1
                self._pool.mark_down(member, "replaced by Swarm")
            self._pool.set_handle(member, handle)
            self._pool.events.emit("launched", name, f"{handle.url} task={handle.backend_id}")
            self._probe(member)
        gone = [name for name in self._pool.names() if name not in seen]
        for name in gone:
            if name in self._removing:
                continue
            self._pool.remove(name)
            self._pool.events.emit("removed", name, "its Swarm service is gone")
            task = self._probes.pop(name, None)
            if task is not None:
                task.cancel()

    def _weight_of(self, found: SwarmReplica) -> int:
        """The label's weight, or 1 where the ring family takes no weights (seed rings)."""
        if found.weight == 1 or getattr(self._pool.family, "weighted", False):
            return found.weight
        log.warning(
            "replica %r has weight %d but the %s ring takes no weights: using 1",
            found.name,
            found.weight,
            self._pool.family.name,
        )
        return 1

    async def set_weight(self, name: str, weight: int) -> Replica:
        """The service's weight label first (every balancer follows it), then this ring."""
        # the sync lock too: a list read before the label changed must not undo it here
        async with self._admin_lock, self._sync_lock:
            if self._pool.get(name) is None:
                raise NotFound(f"hostname {name!r} is not in the pool")
            await self._swarm.set_weight(name, self._pool.check_weight(weight))
            replica = self._pool.set_weight(name, weight)
        self._swarm.changed.set()
        return replica

    def _probe(self, member: Replica) -> None:
        """Heartbeat a new task fast; on the ring once it passes, else Swarm replaces it."""
        incarnation = member.incarnation
        if incarnation is None:
            return
        previous = self._probes.pop(member.name, None)
        if previous is not None:
            previous.cancel()

        def gone() -> bool:
            return incarnation.dead or not self._pool.is_current(member, incarnation)

        async def probe() -> None:
            try:
                ready = await wait_ready(
                    self._session,
                    incarnation.url,
                    rise=self._config.health.rise,
                    timeout=self._config.start_timeout,
                    check_timeout=self._config.health.timeout,
                    check=self._config.health,
                    dead=gone,
                )
                if gone():
                    return
                if ready:
                    self._pool.mark_up(member)
                else:
                    reason = f"did not answer /heartbeat within {self._config.start_timeout:g}s"
                    self._pool.events.emit("heartbeat_down", member.name, reason)
                    member.state = ReplicaState.DOWN
                    if not self._stopping:
                        self._force(member.name, incarnation.backend_id, reason)
            finally:
                if self._probes.get(member.name) is task:
                    del self._probes[member.name]
                async with self._progress:
                    self._progress.notify_all()

        task = asyncio.create_task(probe(), name=f"probe-{member.name}")
        self._probes[member.name] = task

    async def _release_orphan_claims(self, replicas: list[SwarmReplica]) -> None:
        used = {r.ring_id for r in replicas}
        now = time.time()
        for claim in await self._swarm.claims():
            if claim.ring_id not in used and now - claim.created > _ORPHAN_CLAIM_AGE:
                log.info("releasing orphan ring-id claim %d (%r)", claim.ring_id, claim.name)
                await self._swarm.release_ring_id(claim.ring_id)

    def _is_up(self, name: str) -> bool:
        member = self._pool.get(name)
        return member is not None and member.state is ReplicaState.UP

    async def _wait_up(self, names: Sequence[str], timeout: float) -> bool:
        """True once every name is an UP member; False at the deadline.

        Lists the engine itself while it waits (every 0.25 s at most, sooner on progress):
        at startup the run loop is not going yet, and an /add should not wait a whole
        sync interval to see its tasks start.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not all(self._is_up(n) for n in names):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            async with self._progress:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), min(remaining, 0.25))
            if not all(self._is_up(n) for n in names):
                await self.sync()
        return True

    # -- startup --------------------------------------------------------------------------------

    async def start(self, replicas: int) -> None:
        """Adopt the engine's replicas; seed ``replicas`` only when the pool has none at all.

        Seed names are deterministic (``server-1`` ...), so two balancers booting at once
        create each service once: the second gets 409 for each and adopts them.
        """
        async with self._admin_lock:
            await self.sync()
            if len(self._pool) == 0 and replicas > 0:
                names = self._generated_names(replicas, set())
                log.info("no replica services in pool %r: creating %d", self._swarm_pool, replicas)
                for name in names:
                    try:
                        await self._create(name)
                    except Conflict:
                        log.info("replica %r exists already (another balancer made it)", name)
                self._swarm.changed.set()
                await self.sync()
            waiting = self._pool.names()
        budget = self._config.start_timeout + 30.0  # scheduling and image start, then heartbeats
        if not await self._wait_up(waiting, budget):
            down = [n for n in waiting if not self._is_up(n)]
            log.warning("serving without %s: not up yet (Swarm keeps trying)", ", ".join(down))

    @property
    def _swarm_pool(self) -> str:
        return self._config.docker.pool

    # -- operator changes ------------------------------------------------------------------------

    async def _create(self, name: str, weight: int = 1) -> int:
        """Claim the lowest free ring id, then create the service; ``Conflict`` if it exists."""
        claims = await self._swarm.claims()
        used = {c.ring_id for c in claims} | {r.ring_id for r in self._pool.replicas()}
        ring_id = 1
        while True:
            if ring_id not in used and await self._swarm.claim_ring_id(ring_id, name):
                break
            used.add(ring_id)
            ring_id += 1
        try:
            await self._swarm.create_service(name, ring_id, weight)
        except BaseException:
            await asyncio.shield(self._swarm.release_ring_id(ring_id))
            raise
        self._pool.events.emit("added", name, f"ring id {ring_id}")
        return ring_id

    async def add(self, count: int, hostnames: Sequence[str], weight: int = 1) -> None:
        """Create ``count`` replica services (named ones first); answer once all pass heartbeats.

        All or nothing: if one cannot be created or does not come up in time, the ones this
        call created are removed again. ``weight`` goes into each new service's label.
        """
        async with self._admin_lock:
            if self._stopping:
                raise ShuttingDown("the balancer is shutting down")
            names = [self._backend.validate_name(h) for h in hostnames]
            if len(set(names)) != len(names):
                raise BadRequest("hostnames must be distinct")
            await self.sync()
            existing = set(self._pool.names())
            taken = [n for n in names if n in existing]
            if taken:
                raise Conflict(f"hostname(s) already in the pool: {', '.join(taken)}")
            if len(self._pool) + count > MAX_POOL_SIZE:
                raise BadRequest(
                    f"the pool would hold {len(self._pool) + count} replicas; "
                    f"the limit is {MAX_POOL_SIZE}"
                )
            if count == 0:
                return
            extra = self._generated_names(count - len(names), existing | set(names))
            self._pool.check_placeable(names + extra)
            created: list[str] = []
            try:
                for name in names:
                    await self._create(name, weight)
                    created.append(name)
                taken_now = existing | set(names)
                for name in extra:
                    # Another balancer may take a generated name first: pick the next one.
                    while True:
                        try:
                            await self._create(name, weight)
                            break
                        except Conflict:
                            taken_now.add(name)
                            name = self._generated_names(1, taken_now | set(created))[0]
                    created.append(name)
                    taken_now.add(name)
                self._swarm.changed.set()
                budget = self._config.start_timeout + 30.0
                if not await self._wait_up(created, budget):
                    late = [n for n in created if not self._is_up(n)]
                    raise BackendError(
                        f"replica(s) {', '.join(late) or ', '.join(created)} did not pass a "
                        f"heartbeat within {budget:g}s; removed them again"
                    )
            except BaseException:
                await asyncio.shield(self._remove_services(created))
                raise

    async def remove(self, count: int, hostnames: Sequence[str]) -> None:
        """Off the ring at once, drain (bounded), then remove the services and their ring ids."""
        async with self._admin_lock:
            await self.sync()
            chosen = self._choose_removals(count, hostnames)
            names = [r.name for r in chosen]
            self._removing.update(names)
            try:
                self._pool.remove(*names)
                for name in names:
                    self._pool.events.emit("removed", name)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self._config.stop_timeout
                while any(r.in_flight > 0 for r in chosen) and loop.time() < deadline:
                    await asyncio.sleep(0.02)
                await self._remove_services(names)
            finally:
                now = asyncio.get_running_loop().time()
                for name in names:
                    self._removing.discard(name)
                    self._removed_at[name] = now

    async def _remove_services(self, names: Sequence[str]) -> None:
        """Remove services, then release their ring ids (a claim outlives its service)."""
        if not names:
            return
        claims = {c.name: c.ring_id for c in await self._swarm.claims()}
        for name in names:
            probe = self._probes.pop(name, None)
            if probe is not None:
                probe.cancel()
            await self._swarm.remove_service(name)
            if name in claims:
                await self._swarm.release_ring_id(claims[name])
            self._pool.events.emit("stopped", name, "service removed")
        self._swarm.changed.set()
        cutoff = asyncio.get_running_loop().time() - 300.0
        for name, at in list(self._removed_at.items()):
            if at < cutoff:
                del self._removed_at[name]

    # -- the loop and shutdown ------------------------------------------------------------------

    async def run(self) -> None:
        """List and converge on every engine event, and at least every sync interval."""
        while not self._stopping:
            # While a member waits for its task, list faster: a task's "running" state can
            # reach the manager after the container's start event.
            waiting = any(r.state is not ReplicaState.UP for r in self._pool.replicas())
            interval = min(self._config.swarm.sync_interval, 0.25 if waiting else math.inf)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._swarm.changed.wait(), timeout=interval)
            self._swarm.changed.clear()
            if self._stopping:
                break
            try:
                await self.sync()
            except LbproxyError as exc:
                log.warning("listing the swarm failed: %s", exc.message)

    async def close(self, *, fast: bool = False) -> None:
        """Stop following the engine; the replica services stay (others use them).

        ``fast`` (a forced shutdown) changes nothing here: nothing is stopped either way."""
        self._stopping = True
        tasks = [*self._probes.values(), *self._forcing.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        log.info("leaving %d replica services running in the swarm", len(self._pool))
