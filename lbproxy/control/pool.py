"""The replicas the balancer owns and the ring over the healthy ones; no awaits in here.

The reconciler and the health monitor write the pool, the proxy only reads it: ``pick``
is a plain function call on an immutable ring, so the request path never waits on a lock,
on Docker or on a process spawn.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from lbproxy.backends.base import ReplicaHandle
from lbproxy.control.events import EventLog
from lbproxy.errors import BadRequest, EmptyRingError, NotFound
from lbproxy.ring import Ring, RingFamily
from lbproxy.ring.maglev import DEFAULT_TABLE_SIZE, ENTRIES_PER_REPLICA, table_size_for
from lbproxy.ring.offload import RingBuilder, build_ring

log = logging.getLogger(__name__)

#: Largest weight a replica can have (the Maglev and hash ring families).
MAX_WEIGHT = 100

#: Rings kept for reuse. Rings derived by a removal share their table with the ring they
#: came from, so most entries cost nothing; a distinct Maglev table is 8-16 MB.
_RECENT_RINGS = 4
#: Seconds before a failed background build is tried again.
_BUILD_RETRY = 1.0

#: What a ring is built from: (name, ring id, weight) of every member on it.
RingKey = frozenset[tuple[str, int, int]]


class ReplicaState(enum.StrEnum):
    STARTING = "starting"  # launched, waiting for its first heartbeats; not on the ring
    UP = "up"  # on the ring, taking traffic
    DOWN = "down"  # failed; off the ring, waiting for its replacement
    DRAINING = "draining"  # being removed: off the ring, in-flight requests finishing
    EJECTED = "ejected"  # failed requests in a row: off the ring until a heartbeat passes


@dataclass(eq=False, slots=True)
class Incarnation:
    """One running instance of a member: what a launch made, a probe hit and a death ends.

    Kubernetes keeps a pod (one incarnation) apart from the ReplicaSet's desired count;
    here the member (``Replica``) is the stable name and ring id, and each replacement is a
    new ``Incarnation``. Every probe result and death event names the incarnation it came
    from, so a result that arrives after its incarnation was replaced is dropped instead of
    counting against the replacement.
    """

    handle: ReplicaHandle
    number: int  # 1 for the first incarnation of a name, 2 for its first replacement, ...
    started: float = field(default_factory=time.time)
    fails: int = 0  # heartbeats missed in a row by this incarnation
    dead: bool = False  # the backend reported it gone

    @property
    def url(self) -> str:
        return self.handle.url

    @property
    def backend_id(self) -> str:
        return self.handle.backend_id


@dataclass(eq=False, slots=True)
class Replica:
    """One member of the pool: a stable name across incarnations (a replacement reuses it).

    ``ring_id`` is the small integer the seed family places by; it is assigned when the name
    joins and kept for as long as the name stays in the pool, so a replacement that keeps the
    hostname lands on the same slots. ``incarnation`` is what runs now; ``served`` and
    ``failures`` are per-incarnation counters, reset when a new incarnation starts, while
    ``served_total``, ``by_status`` and ``ejections`` belong to the name.
    """

    name: str
    ring_id: int
    incarnation: Incarnation | None = None
    state: ReplicaState = ReplicaState.STARTING
    since: float = field(default_factory=time.time)
    in_flight: int = 0
    served: int = 0
    served_total: int = 0
    incarnations: int = 0
    failures: int = 0  # consecutive failed proxied requests of the current incarnation
    ejections: int = 0
    ejected_until: float = 0.0  # monotonic time before which an ejected member stays out
    eject_streak: int = 0  # the ejection-time multiplier; decays after a quiet eject_max_time
    by_status: dict[int, int] = field(default_factory=dict)
    weight: int = 1  # share of the keys relative to the others (maglev, hashring)

    @property
    def handle(self) -> ReplicaHandle | None:
        return self.incarnation.handle if self.incarnation is not None else None

    @property
    def url(self) -> str:
        return self.incarnation.handle.url if self.incarnation is not None else ""

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ring_id": self.ring_id,
            "state": self.state.value,
            "since": self.since,
            "url": self.url,
            "backend_id": self.incarnation.backend_id if self.incarnation else None,
            "in_flight": self.in_flight,
            "served": self.served_total,
            "incarnations": self.incarnations,
            "ejections": self.ejections,
            "weight": self.weight,
        }


class Pool:
    """Members (the target set, in join order) and the ring over those that are UP."""

    def __init__(
        self,
        family: RingFamily,
        events: EventLog | None = None,
        *,
        eject_after: int = 0,
        eject_base_time: float = 0.0,
        eject_max_time: float = 300.0,
        max_eject_percent: int = 100,
        clock: Callable[[], float] = time.monotonic,
        builder: RingBuilder | None = None,
    ) -> None:
        """``builder``: where rings are built. With one (the balancer), builds run off the
        event loop and the current ring serves until the new one is in; without one (unit
        tests, tools), they run inline and every change is visible at once."""
        self.family = family
        self.events = events if events is not None else EventLog()
        self.eject_after = eject_after
        # Envoy's outlier detection: base_ejection_time x times ejected, capped; at most
        # max_ejection_percent of the members out at once (at least one may go, and the
        # last one on the ring never does). Base 0 readmits on the next passing heartbeat.
        self.eject_base_time = eject_base_time
        self.eject_max_time = eject_max_time
        self.max_eject_percent = max_eject_percent
        self._clock = clock
        self._members: dict[str, Replica] = {}
        self._ring: Ring = family.build({})
        self._builder = builder
        self._ring_key: RingKey = frozenset()
        self._target: RingKey = frozenset()
        self._build_task: asyncio.Task[None] | None = None
        #: Rings being built ahead of ``mark_up``: an /add's (``prepare``) and a
        #: speculative one (``speculate``), by key; each leaves its ring among the recent
        #: ones and its entry here when done.
        self._ahead: dict[RingKey, asyncio.Task[Ring]] = {}
        self._prepared: RingKey | None = None  # the key of the /add's build ahead
        self.ring_builds = 0  # full builds (inline or in the worker)
        self._outgrown = False  # warned that the pool outgrew its Maglev table
        self.ring_derivations = 0  # removals derived from the ring in use
        self._recent_rings: dict[RingKey, Ring] = {}
        #: Called whenever a new ring is in use (the front-end moves queued requests).
        self.on_ring_change: Callable[[], None] | None = None

    # -- reads (the request path) ------------------------------------------------------

    @property
    def ring(self) -> Ring:
        return self._ring

    def pick(self, key: str) -> Iterator[Replica]:
        """Replicas to try for ``key``, owner first. Raises ``EmptyRingError`` when none is up."""
        members = self._members
        for name in self._ring.candidates(key):
            replica = members.get(name)
            if replica is not None and replica.state is ReplicaState.UP:
                yield replica

    def pick_bounded(self, key: str, factor: float, load: int) -> Iterator[Replica]:
        """``pick`` with bounded loads (Mirrokni et al.): owners at capacity go last.

        Capacity is ``ceil(factor * load / n)`` in-flight requests per replica, ``load``
        counting this request; a key whose owner is full walks on to the next replica on
        the ring, so a hot key spills over instead of drowning one replica.
        """
        n = len(self._ring.names)
        if n == 0:
            raise EmptyRingError("no replica is available")
        cap = math.ceil(factor * load / n)
        full: list[Replica] = []
        for replica in self.pick(key):
            if replica.in_flight < cap:
                yield replica
            else:
                full.append(replica)
        yield from full

    def owner(self, key: str) -> Replica:
        """The replica that owns ``key`` now (raises ``EmptyRingError``)."""
        return self._members[self._ring.lookup(key)]

    # -- membership ----------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, name: object) -> bool:
        return name in self._members

    def get(self, name: str) -> Replica | None:
        return self._members.get(name)

    def replicas(self) -> list[Replica]:
        return list(self._members.values())

    def _free_ring_ids(self, count: int) -> list[int]:
        used = {r.ring_id for r in self._members.values()}
        ids: list[int] = []
        candidate = 1
        while len(ids) < count:
            if candidate not in used:
                ids.append(candidate)
            candidate += 1
        return ids

    def check_placeable(self, new_names: list[str]) -> None:
        """Raise ``RingFullError`` if the ring could not hold every member plus these names.

        Checked before anything is launched, so a full ring rejects /add cleanly. Families
        that can tell by arithmetic (Maglev: one entry each at least) do; the seed family,
        whose probing decides, builds its 512-slot ring (microseconds).
        """
        check = getattr(self.family, "check_placeable", None)
        if check is not None:
            check(len(self._members) + len(new_names))
            return
        members = {r.name: r.ring_id for r in self._members.values()}
        members.update(zip(new_names, self._free_ring_ids(len(new_names)), strict=True))
        self.family.build(members)

    def check_weight(self, weight: object) -> int:
        """``weight`` as a valid weight for this family, or ``BadRequest`` saying why."""
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise BadRequest(f'"weight" must be an integer, got {json.dumps(weight)}')
        if not 1 <= weight <= MAX_WEIGHT:
            raise BadRequest(f'"weight" must be from 1 to {MAX_WEIGHT}, got {weight}')
        if weight != 1 and not getattr(self.family, "weighted", False):
            raise BadRequest(
                f"the {self.family.name} ring does not take weights; "
                "use --hash maglev or --hash hashring"
            )
        return weight

    def set_weight(self, name: str, weight: int) -> Replica:
        """Change a member's weight; its ring is rebuilt off the loop (keys move only to or
        from it). Raises ``NotFound`` for an unknown name, ``BadRequest`` for a bad weight."""
        replica = self._members.get(name)
        if replica is None:
            raise NotFound(f"hostname {name!r} is not in the pool")
        replica.weight = self.check_weight(weight)
        self.events.emit("weight", name, str(replica.weight))
        if replica.state is ReplicaState.UP:
            self._rebuild()
        return replica

    def add(self, name: str, ring_id: int = 0) -> Replica:
        """Join ``name`` as STARTING (not on the ring until ``mark_up``).

        ``ring_id`` is honoured when free (an adopted replica keeps the id it had);
        otherwise the smallest free positive integer is assigned.
        """
        if name in self._members:
            raise ValueError(f"{name!r} is already in the pool")
        used = {r.ring_id for r in self._members.values()}
        if ring_id <= 0 or ring_id in used:
            ring_id = self._free_ring_ids(1)[0]
        replica = Replica(name=name, ring_id=ring_id)
        self._members[name] = replica
        self._warn_if_outgrown()
        return replica

    def _warn_if_outgrown(self) -> None:
        """Say once when the pool outgrows its Maglev table: the table is sized to the
        declared pool (``table_size_for``) and never resized (that would move nearly every
        key), so past ~4,096 entries a replica its largest share drifts above the mean as
        ``0.7 * sqrt(N / M)``; the operator can declare the size (``--slots``) at restart."""
        slots = getattr(self.family, "slots", None)
        if self._outgrown or self.family.name != "maglev" or not isinstance(slots, int):
            return
        n = len(self._members)
        if n * ENTRIES_PER_REPLICA <= slots or slots >= DEFAULT_TABLE_SIZE:
            return
        self._outgrown = True
        spread = 0.7 * math.sqrt(n / slots)
        log.warning(
            "the pool has %d replicas for a %d-entry Maglev table (sized to the declared pool): "
            "shares may now stray by about %.0f%% from the mean; restart with --slots %d "
            "(or --replicas/--autoscale MAX at the size you run) for ~4,096 entries a replica",
            n,
            slots,
            spread * 100,
            table_size_for(n),
        )

    def remove(self, *names: str) -> list[Replica]:
        """Take ``names`` out of the pool and off the ring in one rebuild; ids become free.

        One rebuild for the whole batch: a table build holds the event loop for tens of
        milliseconds, so an /rm of 40 must not pay it 40 times.
        """
        removed = [self._members.pop(name) for name in names]
        on_ring = [r for r in removed if r.state is ReplicaState.UP]
        for replica in removed:
            replica.state = ReplicaState.DRAINING
        if on_ring:
            self._rebuild()
            for replica in on_ring:
                self.events.emit("removed_from_ring", replica.name, "removed from the pool")
        return removed

    # -- health transitions ----------------------------------------------------------------

    def set_handle(self, replica: Replica, handle: ReplicaHandle) -> Incarnation:
        """``handle`` is ``replica``'s new incarnation (STARTING); its counters start at 0."""
        replica.incarnations += 1
        incarnation = Incarnation(handle, replica.incarnations)
        replica.incarnation = incarnation
        replica.state = ReplicaState.STARTING
        replica.since = time.time()
        replica.served = 0
        replica.failures = 0
        return incarnation

    def is_current(self, replica: Replica, incarnation: Incarnation | None) -> bool:
        """True while ``incarnation`` is what runs for a member still in the pool."""
        return (
            incarnation is not None
            and replica.incarnation is incarnation
            and self._members.get(replica.name) is replica
        )

    def _offloads(self) -> bool:
        return self._builder is not None and bool(getattr(self.family, "offload", False))

    def _joining_key(self, names: Sequence[str]) -> RingKey:
        """The ring key of the UP members plus ``names``: members keep their id and weight;
        a name not in the pool takes the id ``add`` would give it (the smallest free ones,
        in order) and weight 1, as an /add without hostnames makes them."""
        up = {r.name: r for r in self._members.values() if r.state is ReplicaState.UP}
        new = [n for n in names if n not in self._members]
        ids = dict(zip(new, self._free_ring_ids(len(new)), strict=True))
        key = {(r.name, r.ring_id, r.weight) for r in up.values()}
        for name in names:
            member = self._members.get(name)
            if member is None:
                key.add((name, ids[name], 1))
            else:
                key.add((name, member.ring_id, member.weight))
        return frozenset(key)

    def _covering(self, key: RingKey) -> RingKey | None:
        """A ring key, built or being built, that serves ``key``: ``key`` itself, or ``key``
        with one member more, whose ring without that member is exact (Maglev keeps every
        entry's runner-up: ``MaglevRing.without``); None if there is none."""
        if key == self._ring_key:
            return key
        for known in (*self._recent_rings, *self._ahead):
            if known == key or (len(known) == len(key) + 1 and key < known):
                if known in self._ahead or self._from_superset(key, known) is not None:
                    return known
        return None

    def _from_superset(self, key: RingKey, known: RingKey) -> Ring | None:
        """The recent ring of ``known`` (``key`` or ``key`` plus one member), as ``key``'s
        ring if that is exact."""
        ring = self._recent_rings.get(known)
        if ring is None or known == key:
            return ring
        without = getattr(ring, "without", None)
        if without is None:
            return None
        derived: Ring | None = without({name for name, _, _ in known - key})
        if derived is None or not getattr(derived, "exact", True):
            return None
        return derived

    def _built_for(self, key: RingKey) -> Ring | None:
        """A recent ring that is ``key``'s, or derives exactly into it in O(1)."""
        for known in list(self._recent_rings):
            if known == key or (len(known) == len(key) + 1 and key < known):
                ring = self._from_superset(key, known)
                if ring is not None:
                    return ring
        return None

    def covers(self, names: Sequence[str]) -> bool:
        """Whether the ring of the UP members plus ``names`` is built (or derives from a
        built ring in O(1)), so that their ``mark_up`` swaps it in at once."""
        key = self._joining_key(names)
        return key == self._ring_key or self._built_for(key) is not None

    def prepare(self, joining: list[Replica]) -> None:
        """Start building, off the loop, the ring that ``joining`` (members just launched,
        still STARTING) will make with the members UP now, so that ``mark_up`` finds it
        built: /add's replicas take about 0.5 s to pass their heartbeats and a build of the
        default table about 1 s, and they overlap instead of adding up. Nothing is started
        when a ring built or being built already serves it (one built ahead by
        ``speculate``, possibly with one member more). If the members change meanwhile (a
        death, a failed launch), the prepared ring may not fit and the usual build runs.
        One prepared build at a time; inline pools prepare nothing."""
        if not self._offloads():
            return
        if self._prepared is not None and self._prepared in self._ahead:
            return
        key = self._joining_key([r.name for r in joining])
        if self._covering(key) is not None:
            return
        self._start_ahead(key, "ring-prepare")
        self._prepared = key

    def speculate(self, names: Sequence[str]) -> bool:
        """Build ahead, off the loop, the ring of the UP members plus ``names`` (members
        not in the pool yet: the names the next /add would take), so that the next
        scale-up finds its ring built even when the machine is too busy to build it while
        the replicas start (two loaded cores: a build started with the launch ended
        0.45-1.0 s after the replicas were up). Its ring also serves ``names`` minus one
        (``_covering``). True when that ring is there already (nothing to do); False when
        it is being built now or the pool is not settled: a member not UP, a build of the
        ring in use or another build ahead running (the worker has one core's worth of
        work at a time, and real builds come first)."""
        key = self._joining_key(names)
        if key == self._ring_key or self._built_for(key) is not None:
            return True
        if (
            not self._offloads()
            or self._ahead
            or self._target != self._ring_key
            or (self._build_task is not None and not self._build_task.done())
            or any(r.state is not ReplicaState.UP for r in self._members.values())
        ):
            return False
        self._start_ahead(key, "ring-speculate")
        return False

    def _start_ahead(self, key: RingKey, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._build_ahead(key), name=name)
        self._ahead[key] = task
        task.add_done_callback(functools.partial(self._ahead_done, key))

    def _ahead_done(self, key: RingKey, task: asyncio.Task[Ring]) -> None:
        """A build ahead that failed costs nothing but itself: ``mark_up`` builds as usual."""
        if self._ahead.get(key) is task:
            del self._ahead[key]
        if not task.cancelled() and task.exception() is not None:
            log.warning("building the next ring ahead failed: %s", task.exception())

    async def _build_ahead(self, key: RingKey) -> Ring:
        assert self._builder is not None
        members, weights = _split(key)
        ring = await self._builder.build(self.family, members, weights)
        self.ring_builds += 1
        self._remember(key, ring)
        return ring

    def _remember(self, key: RingKey, ring: Ring) -> None:
        """Keep ``ring`` among the recent rings (the newest last, at most ``_RECENT_RINGS``)."""
        self._recent_rings.pop(key, None)
        self._recent_rings[key] = ring
        while len(self._recent_rings) > _RECENT_RINGS:
            del self._recent_rings[next(iter(self._recent_rings))]

    def mark_up(self, *replicas: Replica) -> None:
        """Put replicas on the ring in one rebuild (an /add of n joins all at once)."""
        changed = False
        for replica in replicas:
            if self._members.get(replica.name) is replica and replica.state is not ReplicaState.UP:
                replica.state = ReplicaState.UP
                replica.since = time.time()
                replica.failures = 0
                if replica.incarnation is not None:
                    replica.incarnation.fails = 0
                changed = True
        if changed:
            self._rebuild()
            for replica in replicas:
                self.events.emit("up", replica.name, replica.url)

    def mark_down(self, replica: Replica, reason: str) -> bool:
        """Take a failed member off the ring at once; False if it was not a live member."""
        if self._members.get(replica.name) is not replica or replica.state is ReplicaState.DOWN:
            return False
        was_up = replica.state is ReplicaState.UP
        if replica.state is ReplicaState.EJECTED:
            self.events.emit("removed_from_ring", replica.name, reason)
        replica.state = ReplicaState.DOWN
        replica.since = time.time()
        if was_up:
            self._rebuild()
            self.events.emit("removed_from_ring", replica.name, reason)
        return True

    def note_failure(
        self, replica: Replica, kind: str, incarnation: Incarnation | None = None
    ) -> None:
        """A proxied request failed on ``replica``; ``eject_after`` in a row eject it.

        ``incarnation`` is the one the request was sent to (None: the current one). A
        failure seen on a connection of an incarnation that is no longer current (replaced,
        or reported dead) is dropped: it says nothing about the replacement, which Envoy
        would count as another host, and with a low ``eject_after`` it would eject it.

        Ejection is passive outlier detection as Envoy does it: the replica leaves the ring
        at once (a derivation, never a build) for ``eject_base_time`` x the times it was
        ejected (capped at ``eject_max_time``), and comes back only after that and a passing
        heartbeat, so a replica that fails one path while its heartbeat passes does not flap
        every second. At most ``max_eject_percent`` of the members are out at once (at least
        one may be), and the last replica on the ring is never ejected: a degraded answer
        beats none.
        """
        if incarnation is not None and (
            replica.incarnation is not incarnation
            or incarnation.dead
            or self._members.get(replica.name) is not replica
        ):
            return
        replica.failures += 1
        if (
            self.eject_after
            and replica.failures >= self.eject_after
            and replica.state is ReplicaState.UP
            and self._members.get(replica.name) is replica
            and len(self._ring.names) > 1
            and self._may_eject_another()
        ):
            replica.state = ReplicaState.EJECTED
            replica.since = time.time()
            replica.ejections += 1
            now = self._clock()
            if replica.eject_streak and now - replica.ejected_until > self.eject_max_time:
                replica.eject_streak = 0  # healthy for a whole cap since: start over (Envoy)
            replica.eject_streak += 1
            hold = min(self.eject_base_time * replica.eject_streak, self.eject_max_time)
            replica.ejected_until = now + hold
            self._rebuild()
            self.events.emit(
                "removed_from_ring",
                replica.name,
                f"ejected after {replica.failures} failures ({kind}) for at least {hold:g} s",
            )

    def _may_eject_another(self) -> bool:
        members = self._members.values()
        out = sum(1 for r in members if r.state is ReplicaState.EJECTED)
        cap = max(1, len(self._members) * self.max_eject_percent // 100)
        return out < cap

    def readmit(self, replica: Replica) -> bool:
        """An ejected replica answered its heartbeat: back on the ring once its ejection
        time is over. Returns whether it came back."""
        if (
            replica.state is ReplicaState.EJECTED
            and self._members.get(replica.name) is replica
            and self._clock() >= replica.ejected_until
        ):
            replica.failures = 0
            self.mark_up(replica)
            return True
        return False

    # -- the ring (never a build on the event loop when a builder is set) -------------------

    def _rebuild(self) -> None:
        """Point the ring at the UP members: reuse, derive, or build off the loop.

        In order: a recent ring of the same members (a replacement or a readmission flips
        back to the set it left); a removal derived from the ring in use (O(1) for Maglev
        and the hash ring, identical to a rebuild); otherwise a build, in the worker when
        the pool has a builder, during which the current ring (minus anything that left)
        keeps serving; ``pick`` skips members that are not UP in any case.
        """
        up = [r for r in self._members.values() if r.state is ReplicaState.UP]
        key: RingKey = frozenset((r.name, r.ring_id, r.weight) for r in up)
        self._target = key
        if key == self._ring_key:
            return
        cached = self._recent_rings.get(key)
        if cached is None:
            # Built (ahead, or the ring in use) with one member more: derived in O(1).
            cached = self._built_for(key)
            self.ring_derivations += cached is not None
        if cached is not None:
            self._install(key, cached)
            return
        if not key:  # nobody up (the last death, a shutdown): nothing to build off the loop
            self._install(key, self.family.build({}))
            return
        names = {r.name for r in up}
        derived = self._derive(self._ring, self._ring_key, names)
        if derived is not None:
            ring, ring_key = derived
            self._install(ring_key, ring)
            if ring_key == key and getattr(ring, "exact", True):
                return
        if self._builder is None or not getattr(self.family, "offload", False):
            members, weights = _split(key)
            self._install(key, build_ring(self.family, members, weights))
            self.ring_builds += 1
            return
        self._schedule_build()

    def _derive(
        self, ring: Ring, ring_key: RingKey, names: set[str]
    ) -> tuple[Ring, RingKey] | None:
        """``ring`` without the members not in ``names``, if any left and it can be derived."""
        gone = ring.names - names
        without = getattr(ring, "without", None)
        if not gone or without is None or gone == ring.names:
            return None
        derived: Ring | None = without(gone)
        if derived is None:
            return None
        self.ring_derivations += 1
        return derived, frozenset(m for m in ring_key if m[0] not in gone)

    def _install(self, key: RingKey, ring: Ring) -> None:
        self._remember(key, ring)
        self._ring = ring
        self._ring_key = key
        if self.on_ring_change is not None:
            self.on_ring_change()

    def _schedule_build(self) -> None:
        if self._build_task is None or self._build_task.done():
            self._build_task = asyncio.get_running_loop().create_task(
                self._build_until_current(), name="ring-build"
            )

    async def _build_until_current(self) -> None:
        """Build the target ring in the worker; again if the target moved meanwhile."""
        assert self._builder is not None
        while self._target != self._ring_key:
            key = self._target
            members, weights = _split(key)
            started = time.monotonic()
            ahead = self._covering(key)
            try:
                ring_ahead = None
                if ahead is not None and ahead in self._ahead:
                    # Built ahead (prepare, speculate) and still running: wait for it.
                    await asyncio.shield(self._ahead[ahead])
                    ring_ahead = self._built_for(key)
                if ring_ahead is not None:
                    ring = ring_ahead
                else:
                    ring = await self._builder.build(self.family, members, weights)
                    self.ring_builds += 1
            except Exception as exc:
                log.exception("ring build failed; retrying in %.0fs", _BUILD_RETRY)
                self.events.emit("ring_build_failed", "", str(exc))
                await asyncio.sleep(_BUILD_RETRY)
                continue
            log.debug("ring of %d built in %.3fs", len(members), time.monotonic() - started)
            if self._target == key:
                self._install(key, ring)
                return
            # Members left while it was built: derive from the new ring if that is exact.
            self._recent_rings[key] = ring
            target_names = {m[0] for m in self._target}
            derived = self._derive(ring, key, target_names)
            if derived is not None and getattr(derived[0], "exact", True):
                ring, key = derived
            if key == self._target:
                self._install(key, ring)
                return
            # Members joined while it was built: its members still serve, and it holds
            # those that joined before it started, so it is closer to the target than the
            # ring in use: they serve now, the later ones after the next build.
            if key <= self._target and self._ring_key <= key:
                self._install(key, ring)

    async def settled(self) -> None:
        """Return once the ring in use is the ring over the UP members (built if need be)."""
        while self._target != self._ring_key:
            if self._build_task is None or self._build_task.done():
                self._schedule_build()
            assert self._build_task is not None
            await asyncio.shield(self._build_task)

    def close(self) -> None:
        """Stop a background build and the build worker."""
        if self._build_task is not None:
            self._build_task.cancel()
        for task in list(self._ahead.values()):
            task.cancel()
        if self._builder is not None:
            self._builder.close()

    def has_up(self) -> bool:
        return bool(self._ring.names)


def _split(key: RingKey) -> tuple[dict[str, int], dict[str, int] | None]:
    """Members ``{name: ring id}`` and weights (None when every weight is 1) of a key."""
    members = {name: ring_id for name, ring_id, _ in key}
    weights = {name: weight for name, _, weight in key}
    return members, (weights if any(w != 1 for w in weights.values()) else None)


__all__ = ["EmptyRingError", "Incarnation", "Pool", "Replica", "ReplicaState"]
