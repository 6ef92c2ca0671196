"""Replicas as Docker Swarm services, driven through the Engine API with aiodocker.

Every Engine call the Swarm backend makes is in here, typed, so the control plane
(``control/swarm.py``) never sees a raw API shape; the connection, error and event-stream
plumbing it shares with the Docker backend is ``engine.EngineBackend``.

The mapping (docs/swarm.md explains it): **one replicated service per replica**, with one
task. The service is named ``<pool>_<hostname>``, its task's container has the hostname,
and the service's labels hold the pool, the hostname and the ring id. A task that Swarm
restarts or reschedules is created from the same service spec, so it comes back under the
same name and ring id and lands on the same ring slots. A task is an incarnation: its ID
is the handle's ``backend_id``.

The engine is the single source of truth shared by every balancer:
- service names are unique in the swarm's Raft store, so two balancers that create the same
  hostname at once get one service and one ``409 Conflict``;
- a ring id is claimed by creating a Swarm config object named ``<pool>-ring-<id>``
  (config names are unique as well), so two concurrent ``/add``\\s never reuse an id;
- service updates carry the version they were read at, so of two balancers that force a
  hung replica's replacement at once, only one update is applied.

A replica's weight (``/add``'s ``"weight"``, ``PUT /lbproxy/weight``) is the service label
``lbproxy.weight``: on the service only, not its task's containers, so changing it is a
label update that restarts nothing, and every balancer (and a restarted one) reads it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime as dt
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiodocker

from lbproxy.backends.base import (
    BackendEvent,
    DeathCallback,
    ReplicaHandle,
    validate_hostname,
)
from lbproxy.backends.docker import LABEL_POOL, LABEL_REPLICA, LABEL_RING_ID, LABEL_ROLE
from lbproxy.backends.engine import ENGINE_ERRORS as _ENGINE_ERRORS
from lbproxy.backends.engine import EngineBackend
from lbproxy.backends.engine import engine_error as _engine_error
from lbproxy.config import Config
from lbproxy.errors import BackendError, BadRequest, Conflict, NotFound

log = logging.getLogger(__name__)

ROLE_REPLICA = "replica"
ROLE_RING_CLAIM = "ring-claim"
#: A replica's weight, on its service (absent: 1).
LABEL_WEIGHT = "lbproxy.weight"
#: Read-modify-write attempts of a label update that other writers keep beating.
_UPDATE_ATTEMPTS = 5
#: The label `docker stack deploy` puts on a stack's objects; `docker stack rm` removes by it.
LABEL_STACK = "com.docker.stack.namespace"

#: Swarm object names (services): letters and digits, '-' and '_' inside (swarmkit's rule).
_SWARM_NAME = re.compile(r"^[A-Za-z0-9](?:[-_]*[A-Za-z0-9])*$")
_SWARM_NAME_MAX = 63
_NS_PER_S = 1_000_000_000


def _parse_time(text: str) -> float:
    """Engine timestamps (RFC 3339 with up to 9 fractional digits) as epoch seconds."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text)
    if match is None:
        return 0.0
    base, frac, zone = match.groups()
    zone = "+00:00" if zone == "Z" else zone
    stamp = dt.datetime.fromisoformat(base + zone).timestamp()
    return stamp + (int(frac) / 10 ** len(frac) if frac else 0.0)


def _created(obj: Mapping[str, Any]) -> float:
    return _parse_time(str(obj.get("CreatedAt", "")))


@dataclass(frozen=True, slots=True)
class SwarmReplica:
    """One replica service as the engine reports it, with its running task if it has one."""

    name: str
    ring_id: int
    service_id: str
    #: The running task (the current incarnation) and its address; None while Swarm
    #: (re)starts it.
    task_id: str | None = None
    url: str | None = None
    weight: int = 1

    @property
    def handle(self) -> ReplicaHandle | None:
        if self.task_id is None or self.url is None:
            return None
        return ReplicaHandle(self.name, self.url, self.task_id, self.ring_id)


@dataclass(frozen=True, slots=True)
class RingClaim:
    """A ring id held by a Swarm config object, for the replica ``name``."""

    ring_id: int
    name: str
    created: float


class SwarmBackend(EngineBackend):
    """Creates, watches and removes this pool's replica services; the engine keeps them."""

    default_prefix = "server-"
    kind = "Swarm"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._pool = config.docker.pool
        #: Set whenever the engine reports a change to this pool (service created, updated,
        #: removed; a task's container died): the controller lists and converges.
        self.changed = asyncio.Event()
        #: The ID of the replicas' network, which the engine puts in the specs it returns
        #: (``update_body`` names the network again).
        self._network_id: str | None = None

    # -- helpers -------------------------------------------------------------------------

    def service_name(self, name: str) -> str:
        return f"{self._pool}_{name}"

    def _claim_name(self, ring_id: int) -> str:
        return f"{self._pool}-ring-{ring_id}"

    def _labels(self, role: str, name: str, ring_id: int) -> dict[str, str]:
        labels = {
            LABEL_POOL: self._pool,
            LABEL_ROLE: role,
            LABEL_REPLICA: name,
            LABEL_RING_ID: str(ring_id),
        }
        if self._config.swarm.stack:
            labels[LABEL_STACK] = self._config.swarm.stack
        return labels

    def _filter(self, role: str) -> dict[str, list[str]]:
        return {"label": [f"{LABEL_POOL}={self._pool}", f"{LABEL_ROLE}={role}"]}

    # -- lifecycle -------------------------------------------------------------------------

    def validate_name(self, name: object) -> str:
        """A hostname that also makes a valid Swarm service name ``<pool>_<name>``."""
        checked = validate_hostname(name)
        service = self.service_name(checked)
        if not _SWARM_NAME.match(checked) or len(service) > _SWARM_NAME_MAX:
            raise BadRequest(
                f"hostname {checked!r} cannot name a Swarm service: use letters, digits, "
                f"'-' and '_' (no '.'), at most {_SWARM_NAME_MAX - len(self._pool) - 1} "
                "characters"
            )
        return checked

    async def open(self, on_death: DeathCallback) -> None:
        await self.connect(on_death)
        try:
            info = await self.docker.system.info()
        except _ENGINE_ERRORS as exc:
            await self.close()
            raise _engine_error("asking the Docker engine for its swarm state", exc) from exc
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            await self.close()
            raise BackendError(
                "the swarm backend needs a Swarm manager: this engine's swarm state is "
                f"{swarm.get('LocalNodeState', 'unknown')!r} (run `docker swarm init`, or "
                "place the balancer on a manager node)",
                status=503,
            )
        try:
            await self._ensure_network()
        except BaseException:
            await self.close()
            raise
        # Service events are cluster-wide on a manager; container ``start`` and ``die``
        # events are local to this node (other nodes' task changes arrive with the list).
        self.follow_events(
            {
                "type": ["service", "container"],
                "event": ["create", "update", "remove", "start", "die"],
            },
            name="swarm-events",
        )

    async def _ensure_network(self) -> None:
        """The replicas' overlay network: used if it exists (a stack made it), else created."""
        name = self._config.swarm.network
        try:
            info = await (await self.docker.networks.get(name)).show()
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise _engine_error(f"looking up network {name!r}", exc) from exc
            info = None
        except _ENGINE_ERRORS as exc:
            raise _engine_error(f"looking up network {name!r}", exc) from exc
        if info is not None:
            if info.get("Driver") != "overlay" or not info.get("Attachable"):
                raise BackendError(
                    f"network {name!r} exists but is not an attachable overlay network "
                    f"(driver {info.get('Driver')!r}); choose another --swarm-network",
                    status=503,
                )
            self._network_id = info.get("Id")
            return
        try:
            network = await self.docker.networks.create(self.network_body())
            self._network_id = network.id
            log.info("created overlay network %r", name)
        except aiodocker.DockerError as exc:
            if exc.status != 409:  # another balancer created it first: fine
                raise _engine_error(f"creating network {name!r}", exc) from exc
            with contextlib.suppress(*_ENGINE_ERRORS):
                self._network_id = (await (await self.docker.networks.get(name)).show())["Id"]
        except _ENGINE_ERRORS as exc:
            raise _engine_error(f"creating network {name!r}", exc) from exc

    def network_body(self) -> dict[str, Any]:
        """The replicas' overlay network's creation body, exactly as the socket proxy allows
        it (socket-proxy/haproxy.cfg: this name, attachable overlay, no driver options)."""
        labels = {LABEL_POOL: self._pool}
        if self._config.swarm.stack:
            labels[LABEL_STACK] = self._config.swarm.stack
        return {
            "Name": self._config.swarm.network,
            "Driver": "overlay",
            "Attachable": True,
            "CheckDuplicate": True,
            "Labels": labels,
        }

    def update_body(self, spec: Mapping[str, Any]) -> str:
        """A service update's body: the spec as the engine returned it, network named again.

        The engine keeps a service's networks by ID (it resolves the name at creation), and
        the socket proxy cannot tell whose network an ID is: it lets a service join the
        replicas' network by name only. The engine resolves the name to the same ID, so
        the update changes nothing else. (Another network is left as it is: refused.)
        """
        body = copy.deepcopy(dict(spec))
        ours = {self._config.swarm.network, self._network_id}
        for attachment in (body.get("TaskTemplate") or {}).get("Networks") or []:
            if attachment.get("Target") in ours:
                attachment["Target"] = self._config.swarm.network
        return json.dumps(body)

    # -- reading the engine's state ---------------------------------------------------------

    def _task_url(self, task: Mapping[str, Any]) -> str | None:
        network = self._config.swarm.network
        for attachment in task.get("NetworksAttachments") or []:
            spec = (attachment.get("Network") or {}).get("Spec") or {}
            addresses = attachment.get("Addresses") or []
            if spec.get("Name") == network and addresses:
                address = str(addresses[0]).split("/", 1)[0]
                return f"http://{address}:{self._config.docker.replica_port}"
        return None

    async def replicas(self) -> list[SwarmReplica]:
        """Every replica service of this pool, with its running task, oldest service first."""
        try:
            services = await self.docker.services.list(filters=self._filter(ROLE_REPLICA))
            tasks = await self.docker.tasks.list(filters={"desired-state": ["running"]})
        except _ENGINE_ERRORS as exc:
            raise _engine_error("listing this pool's services", exc) from exc
        running: dict[str, Mapping[str, Any]] = {}
        for task in tasks:
            if (task.get("Status") or {}).get("State") == "running":
                previous: Mapping[str, Any] | None = running.get(task["ServiceID"])
                # Two running tasks for one service: a start-first update in progress; the
                # newer one is the incarnation that stays.
                if previous is None or _created(task) > _created(previous):
                    running[task["ServiceID"]] = task
        result: list[tuple[float, SwarmReplica]] = []
        for service in services:
            labels = (service.get("Spec") or {}).get("Labels") or {}
            name = labels.get(LABEL_REPLICA)
            ring_id = labels.get(LABEL_RING_ID, "")
            if not name or not ring_id.isdigit():
                continue
            current = running.get(service["ID"])
            weight = labels.get(LABEL_WEIGHT, "1")
            result.append(
                (
                    _parse_time(service.get("CreatedAt", "")),
                    SwarmReplica(
                        name=name,
                        ring_id=int(ring_id),
                        service_id=service["ID"],
                        task_id=current["ID"] if current is not None else None,
                        url=self._task_url(current) if current is not None else None,
                        weight=int(weight) if weight.isdigit() and int(weight) > 0 else 1,
                    ),
                )
            )
        result.sort(key=lambda item: (item[0], item[1].name))
        return [replica for _, replica in result]

    async def claims(self) -> list[RingClaim]:
        """The ring ids this pool holds (config objects), with the replica each is for."""
        try:
            configs = await self.docker.configs.list(filters=self._filter(ROLE_RING_CLAIM))
        except _ENGINE_ERRORS as exc:
            raise _engine_error("listing this pool's ring-id claims", exc) from exc
        found: list[RingClaim] = []
        for config in configs:
            labels = (config.get("Spec") or {}).get("Labels") or {}
            ring_id = labels.get(LABEL_RING_ID, "")
            if ring_id.isdigit():
                found.append(
                    RingClaim(
                        int(ring_id),
                        labels.get(LABEL_REPLICA, ""),
                        _parse_time(config.get("CreatedAt", "")),
                    )
                )
        return found

    # -- changing the engine's state ----------------------------------------------------------

    async def claim_ring_id(self, ring_id: int, name: str) -> bool:
        """Hold ``ring_id`` for ``name``; False if another claim holds it (name taken)."""
        try:
            await self.docker._query_json(
                "configs/create", method="POST", data=self.claim_body(ring_id, name)
            )
        except aiodocker.DockerError as exc:
            if exc.status == 409:
                return False
            raise _engine_error(f"claiming ring id {ring_id}", exc) from exc
        except _ENGINE_ERRORS as exc:
            raise _engine_error(f"claiming ring id {ring_id}", exc) from exc
        return True

    def claim_body(self, ring_id: int, name: str) -> str:
        """The ring-id claim's creation body: ``Name`` first, as the socket proxy requires."""
        return json.dumps(
            {
                "Name": self._claim_name(ring_id),
                "Labels": self._labels(ROLE_RING_CLAIM, name, ring_id),
                "Data": base64.b64encode(name.encode()).decode(),
            }
        )

    async def release_ring_id(self, ring_id: int) -> None:
        try:
            await self.docker.configs.delete(self._claim_name(ring_id))
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise _engine_error(f"releasing ring id {ring_id}", exc) from exc
        except _ENGINE_ERRORS as exc:
            raise _engine_error(f"releasing ring id {ring_id}", exc) from exc

    def _service_spec(self, name: str, ring_id: int, weight: int = 1) -> dict[str, Any]:
        """The Engine API's ServiceSpec of a replica, ``Name`` first (see ``create_body``)."""
        dc, sc = self._config.docker, self._config.swarm
        labels = self._labels(ROLE_REPLICA, name, ring_id)
        task_template: dict[str, Any] = {
            "ContainerSpec": {
                "Image": dc.image,
                "Hostname": name,
                "Env": [f"SERVER_ID={name}", f"PORT={dc.replica_port}"],
                "Labels": labels,
                # The balancers' heartbeats decide health; the image's HEALTHCHECK would
                # also hold a new task in "starting" until Docker's own check passes.
                "HealthCheck": {"Test": ["NONE"]},
                "StopGracePeriod": int(self._config.stop_timeout * _NS_PER_S),
                "CapabilityDrop": ["ALL"],
                "Privileges": {"NoNewPrivileges": True},
            },
            "Resources": {
                "Limits": {
                    "MemoryBytes": dc.memory_mb * 1024 * 1024,
                    "NanoCPUs": int(dc.cpus * 1e9),
                    "Pids": 256,
                }
            },
            # Swarm restarts a dead task at once (its default waits 5 s).
            "RestartPolicy": {"Condition": "any", "Delay": _NS_PER_S // 10, "MaxAttempts": 0},
            "Placement": {"Constraints": list(sc.constraints)},
            "Networks": [{"Target": sc.network, "Aliases": [name]}],
            "LogDriver": {"Name": "json-file", "Options": {"max-size": "1m"}},
        }
        return {
            "Name": self.service_name(name),
            # the weight on the service only: changing it then restarts no task
            "Labels": {**labels, LABEL_WEIGHT: str(weight)},
            "TaskTemplate": task_template,
            "Mode": {"Replicated": {"Replicas": 1}},
            # A forced replacement starts the new task before it stops the hung one.
            "UpdateConfig": {
                "Parallelism": 1,
                "Order": "start-first",
                "FailureAction": "continue",
            },
            # Tasks are addressed by their own IP: no virtual IP (nor ingress) needed.
            "EndpointSpec": {"Mode": "dnsrr"},
        }

    def create_body(self, name: str, ring_id: int, weight: int = 1) -> str:
        """The service creation body, as the socket proxy (socket-proxy/haproxy.cfg) checks it.

        A service's name is in the body, where the proxy cannot tell a top-level ``Name``
        from a nested one: so it must come first (``{"Name": "<pool>_...", ...}``, which
        aiodocker's ``services.create`` does not do), and no other ``Name`` key may follow
        but the log driver's (the engine's decoder keeps the last of duplicate keys).
        """
        return json.dumps(self._service_spec(name, ring_id, weight))

    async def create_service(self, name: str, ring_id: int, weight: int = 1) -> str:
        """Create the replica service; ``Conflict`` if a service of that name exists."""
        try:
            created = await self.docker._query_json(
                "services/create", method="POST", data=self.create_body(name, ring_id, weight)
            )
        except aiodocker.DockerError as exc:
            if exc.status == 409:
                raise Conflict(f"a Swarm service named {self.service_name(name)!r} exists") from exc
            raise _engine_error(f"creating replica service {name!r}", exc) from exc
        except _ENGINE_ERRORS as exc:
            raise _engine_error(f"creating replica service {name!r}", exc) from exc
        log.info("created service %r (ring id %d)", self.service_name(name), ring_id)
        return str(created["ID"])

    async def remove_service(self, name: str) -> None:
        """Remove the replica service (Swarm then stops its task); gone already is fine."""
        try:
            await self.docker.services.delete(self.service_name(name))
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise _engine_error(f"removing replica service {name!r}", exc) from exc
        except _ENGINE_ERRORS as exc:
            raise _engine_error(f"removing replica service {name!r}", exc) from exc

    async def force_update(self, name: str, task_id: str) -> bool:
        """Make Swarm replace task ``task_id`` of ``name`` (hung: it runs but fails heartbeats).

        Done like ``docker service update --force``: the spec's ``ForceUpdate`` counter goes
        up by one, sent with the version it was read at. Skipped (False) when the task is no
        longer the service's current one or a forced update newer than the task already
        exists (the service's counter is past the task's), and when another balancer's
        update won the version race: one replacement, not one per balancer. (A label
        update, such as a weight, is not a replacement: it does not count.)
        """
        service_name = self.service_name(name)
        try:
            service = await self.docker.services.inspect(service_name)
            task = await self.docker.tasks.inspect(task_id)
            status = task.get("Status") or {}
            spec = service["Spec"]
            template = spec["TaskTemplate"]
            forced = int(template.get("ForceUpdate", 0))
            if (
                task.get("ServiceID") != service["ID"]
                or task.get("DesiredState") != "running"
                or status.get("State") != "running"
                or forced > int((task.get("Spec") or {}).get("ForceUpdate", 0))
            ):
                return False  # already dead or superseded: Swarm is on it
            template["ForceUpdate"] = forced + 1
            # by name: the socket proxy lets updates through for the pool's names only
            await self.docker._query_json(
                f"services/{service_name}/update",
                method="POST",
                data=self.update_body(spec),
                params={"version": service["Version"]["Index"]},
            )
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return False
            # "update out of sequence": another writer changed the service since we read it.
            if "out of sequence" in str(exc.message):
                return False
            raise _engine_error(f"forcing the replacement of {name!r}", exc) from exc
        except _ENGINE_ERRORS as exc:
            raise _engine_error(f"forcing the replacement of {name!r}", exc) from exc
        log.info("forced an update of %r to replace task %s", service_name, task_id[:12])
        return True

    async def set_weight(self, name: str, weight: int) -> None:
        """Write ``weight`` into the service's label (read-modify-write at its version).

        Only the service's own labels change, so Swarm replaces no task; another writer's
        update in between (a forced replacement, another balancer's weight) makes the
        engine refuse ours as out of sequence, and it is read and applied again.
        """
        service_name = self.service_name(name)
        for _ in range(_UPDATE_ATTEMPTS):
            try:
                service = await self.docker.services.inspect(service_name)
                spec = service["Spec"]
                labels = spec.setdefault("Labels", {})
                if labels.get(LABEL_WEIGHT) == str(weight):
                    return
                labels[LABEL_WEIGHT] = str(weight)
                await self.docker._query_json(
                    f"services/{service_name}/update",
                    method="POST",
                    data=self.update_body(spec),
                    params={"version": service["Version"]["Index"]},
                )
                log.info("weight of %r set to %d", service_name, weight)
                return
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    raise NotFound(f"hostname {name!r} is not in the pool") from exc
                if "out of sequence" not in str(exc.message):
                    raise _engine_error(f"setting the weight of {name!r}", exc) from exc
            except _ENGINE_ERRORS as exc:
                raise _engine_error(f"setting the weight of {name!r}", exc) from exc
        raise Conflict(f"the service of {name!r} kept changing; try the weight again")

    # -- the ReplicaBackend interface ----------------------------------------------------------

    async def adopt(self) -> list[ReplicaHandle]:
        """The running tasks of this pool's services (nothing is removed: the engine decides)."""
        return [h for r in await self.replicas() if (h := r.handle) is not None]

    async def list(self) -> list[ReplicaHandle]:
        return await self.adopt()

    async def launch(self, name: str, ring_id: int) -> ReplicaHandle:
        """Create the service and return its first running task (bounded by start_timeout)."""
        await self.create_service(name, ring_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.start_timeout
        while loop.time() < deadline:
            for replica in await self.replicas():
                if replica.name == name and replica.handle is not None:
                    return replica.handle
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=0.25)
        await self.remove_service(name)
        raise BackendError(f"Swarm did not start a task for {name!r} in time")

    async def stop(self, handle: ReplicaHandle, *, timeout: float) -> None:
        """Remove the replica's service (Swarm stops its task with the spec's grace period)."""
        await self.remove_service(handle.name)

    # -- events -----------------------------------------------------------------------------------

    def on_resync(self) -> None:
        self.changed.set()  # events may have been missed: list again

    def on_event(self, event: Mapping[str, Any]) -> None:
        actor = event.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        if event.get("Type") == "service":
            if str(attributes.get("name", "")).startswith(f"{self._pool}_"):
                self.changed.set()
            return
        if attributes.get(LABEL_POOL) != self._pool or not attributes.get(LABEL_REPLICA):
            return
        self.changed.set()
        # ``start`` only wakes the list: reported as a death, a start that arrives after the
        # list showed the new task would mark that new incarnation dead.
        if (event.get("Action") or event.get("status")) != "die":
            return
        task_id = attributes.get("com.docker.swarm.task.id")
        if task_id and self._on_death is not None:
            code = attributes.get("exitCode", "?")
            self._on_death(
                BackendEvent(
                    attributes[LABEL_REPLICA], task_id, f"task container died (exit code {code})"
                )
            )
