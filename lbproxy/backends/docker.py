"""Replicas as Docker containers, driven through the Engine API with aiodocker.

With swarm.py, one of the two modules that import aiodocker (both under ``backends/``).
Every container it creates carries labels (pool, role, replica name, ring id) so the
balancer can always tell its own containers from anything else on the host, adopt them
after a restart and clean up after a crash. A replica's container is named
``<pool>_<hostname>`` and is started, stopped and removed **by that name**: the socket
proxy (socket-proxy/haproxy.cfg) sees names in paths, not labels, so it lets the balancer
change only containers whose name carries the pool's prefix.
Deaths arrive from the engine's event stream, so a killed container is replaced at once;
the heartbeat monitor stays as the second line (a hung container still runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import uuid
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import aiodocker

from lbproxy.backends.base import (
    RESYNC,
    BackendEvent,
    DeathCallback,
    ReplicaHandle,
    launch_or_undo,
    settle,
    validate_hostname,
)
from lbproxy.backends.command import container_command, replica_env
from lbproxy.backends.engine import ENGINE_ERRORS as _ENGINE_ERRORS
from lbproxy.backends.engine import EngineBackend
from lbproxy.backends.engine import engine_error as _engine_error
from lbproxy.config import Config, DockerConfig
from lbproxy.errors import BackendError, Conflict, LbproxyError

log = logging.getLogger(__name__)

LABEL_POOL = "lbproxy.control.pool"
LABEL_ROLE = "lbproxy.role"
LABEL_REPLICA = "lbproxy.replica"
LABEL_RING_ID = "lbproxy.ring-id"
#: A token unique to one launch: a launch whose create call was cut off can still find
#: (and remove) exactly the container it made, and nothing else.
LABEL_LAUNCH = "lbproxy.launch"
ROLE_REPLICA = "replica"
#: The replicas' network, when a balancer of the pool created it.
ROLE_NETWORK = "network"

T = TypeVar("T")


class DockerBackend(EngineBackend):
    """Creates, watches and removes this pool's replica containers."""

    kind = "Docker"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self._docker_config = config.docker
        # Generated hostnames carry the pool too (container names carry it anyway).
        self.default_prefix = f"{config.docker.pool}-"
        self._undoing: set[asyncio.Task[None]] = set()
        #: The ID of the replicas' network when it is the pool's: this run created it (it
        #: found none of that name), or found it carrying the pool's network labels (an
        #: earlier balancer of the pool made it and died without removing it). ``close``
        #: removes it. One without those labels (Compose's, an operator's) is never removed.
        self._pool_network: str | None = None

    # -- helpers -------------------------------------------------------------------------

    def container_name(self, name: str) -> str:
        """The container of replica ``name``: ``<pool>_<name>``.

        Container names are global on an engine, so the pool's prefix keeps two pools (a
        test pool beside a user's) from colliding, and it is what the socket proxy checks.
        """
        return f"{self._docker_config.pool}_{name}"

    def _legacy(self, cname: str) -> bool:
        """A container of the pool named after its bare hostname, as lbproxy named replicas
        before names carried the pool (0da3779): the socket proxy refuses every change to it."""
        return not cname.startswith(f"{self._docker_config.pool}_")

    def _legacy_advice(self, cname: str) -> str:
        pool = self._docker_config.pool
        return (
            f"container {cname!r} of pool {pool!r} is named after its bare hostname (an older "
            f"lbproxy made it); through the socket proxy, which lets the balancer change only "
            f"containers named '{pool}_...', the balancer cannot stop or remove it: remove it "
            f"with `docker rm -f {cname}`"
        )

    def _by_name(self, name: str) -> aiodocker.containers.DockerContainer:
        """Replica ``name``'s container, addressed by its name (what the proxy allows)."""
        return self.docker.containers.container(self.container_name(name))

    def _labels(self, name: str, ring_id: int, token: str) -> dict[str, str]:
        return {
            LABEL_POOL: self._docker_config.pool,
            LABEL_ROLE: ROLE_REPLICA,
            LABEL_REPLICA: name,
            LABEL_RING_ID: str(ring_id),
            LABEL_LAUNCH: token,
        }

    def _pool_filter(self) -> list[str]:
        return [f"{LABEL_POOL}={self._docker_config.pool}", f"{LABEL_ROLE}={ROLE_REPLICA}"]

    def _handle_from(self, info: dict[str, Any]) -> ReplicaHandle:
        labels = info["Config"]["Labels"] or {}
        networks = info["NetworkSettings"]["Networks"] or {}
        net = networks.get(self._docker_config.network)
        if not net or not net.get("IPAddress"):
            raise BackendError(
                f"container {info['Name']} has no address on network "
                f"{self._docker_config.network!r}"
            )
        # Address by IP, not by name: a replacement under the same name gets a new IP, and
        # a cached DNS answer must never send traffic to the dead one.
        url = f"http://{net['IPAddress']}:{self._docker_config.replica_port}"
        ring_id = labels.get(LABEL_RING_ID, "0")
        return ReplicaHandle(
            name=labels.get(LABEL_REPLICA, info["Name"].lstrip("/")),
            url=url,
            backend_id=info["Id"],
            ring_id=int(ring_id) if ring_id.isdigit() else 0,
        )

    # -- lifecycle -------------------------------------------------------------------------

    def validate_name(self, name: object) -> str:
        return validate_hostname(name)

    async def open(self, on_death: DeathCallback) -> None:
        await self.connect(on_death)
        try:
            await self._ensure_network()
            await self._ensure_image()
        except BaseException:
            await self.close()  # and the network, if it is the pool's
            raise
        self.follow_events(
            {"type": ["container"], "event": ["die"], "label": self._pool_filter()},
            name="docker-events",
        )

    async def close(self) -> None:
        if self._docker is not None:
            await settle(self._undoing)  # cancelled launches still being removed
            await self._remove_network()
        await super().close()

    async def _remove_network(self) -> None:
        """Remove the pool's network (made by this run or an earlier balancer of the pool),
        once its replicas are gone (the shutdown removed them before closing the backend).
        Compose removes the networks it made on ``down``; a balancer run by hand left one
        behind per run, and for good when it was killed (the next one found it). One the
        engine still has endpoints on (a replica left running) stays, and the log says why."""
        if self._pool_network is None:
            return
        name = self._docker_config.network
        try:
            # By name, as the socket proxy allows (it lets the pool's network alone be
            # removed, and nothing by ID), once the name is seen to be still the network
            # found or made at the start (labels cannot change: still the pool's).
            if (await self.docker.networks.get(name)).id != self._pool_network:
                log.warning("left network %r: the name is another network's now", name)
                return
            network = aiodocker.networks.DockerNetwork(self.docker, name)  # type: ignore[no-untyped-call]
            await network.delete()
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                log.warning(
                    "left network %r behind: Docker engine said %s: %s",
                    name,
                    exc.status,
                    exc.message,
                )
                return
        except _ENGINE_ERRORS as exc:
            log.warning("left network %r behind: %s", name, exc)
            return
        self._pool_network = None
        log.info("removed network %r", name)

    def _is_pools_network(self, info: Mapping[str, Any]) -> bool:
        """Whether a network carries the labels a balancer of this pool creates it with."""
        labels = info.get("Labels") or {}
        return (
            labels.get(LABEL_POOL) == self._docker_config.pool
            and labels.get(LABEL_ROLE) == ROLE_NETWORK
        )

    async def _ensure_network(self) -> None:
        name = self._docker_config.network
        try:
            info = await (await self.docker.networks.get(name)).show()
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise _engine_error(f"looking up network {name!r}", exc) from exc
            info = None
        except _ENGINE_ERRORS as exc:
            raise _engine_error(f"looking up network {name!r}", exc) from exc
        if info is not None:
            if self._is_pools_network(info):
                # An earlier balancer of the pool made it (and was killed before removing
                # it): the pool's, so this run removes it when it stops.
                self._pool_network = info["Id"]
                log.info("found network %r, the pool's: removed when this balancer stops", name)
            return
        try:
            network = await self.docker.networks.create(self.network_body())
            self._pool_network = network.id
            log.info("created network %r", name)
        except _ENGINE_ERRORS as exc:
            raise _engine_error(f"creating network {name!r}", exc) from exc

    def network_body(self) -> dict[str, Any]:
        """The replicas' network's creation body, exactly as the socket proxy allows it
        (socket-proxy/haproxy.cfg: this name, a bridge, no driver options). Its labels
        make it the pool's: any balancer of the pool removes it when it stops."""
        return {
            "Name": self._docker_config.network,
            "Driver": "bridge",
            "CheckDuplicate": True,
            "Labels": {LABEL_POOL: self._docker_config.pool, LABEL_ROLE: ROLE_NETWORK},
        }

    async def _ensure_image(self) -> None:
        image = self._docker_config.image
        try:
            await self.docker.images.inspect(image)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                how = (
                    "build it with `make images` (or `docker compose build`)"
                    if image == DockerConfig().image
                    else f"pull or build it first (docker pull {image})"
                )
                raise BackendError(
                    f"replica image {image!r} is not on the Docker engine: {how}", status=503
                ) from exc
            raise _engine_error(f"inspecting image {image!r}", exc) from exc

    # -- the interface -------------------------------------------------------------------

    async def adopt(self) -> list[ReplicaHandle]:
        """Reuse running replicas of this pool; remove the dead ones an earlier run left."""
        try:
            containers = await self.docker.containers.list(
                all=True, filters=json.dumps({"label": self._pool_filter()})
            )
        except _ENGINE_ERRORS as exc:
            raise _engine_error("listing this pool's containers", exc) from exc
        handles: list[ReplicaHandle] = []
        for container in containers:
            try:
                info = await container.show()
                cname = str(info["Name"]).lstrip("/")
                if info["State"]["Running"]:
                    handle = self._handle_from(info)
                    handles.append(handle)
                    log.info("adopted replica %r (%s)", handle.name, handle.backend_id[:12])
                    if self._legacy(cname):
                        log.warning("adopted, but: %s", self._legacy_advice(cname))
                    continue
                try:
                    # by name: the socket proxy refuses changes addressed by ID
                    await self.docker.containers.container(cname).delete(force=True)
                except aiodocker.DockerError as exc:
                    if exc.status == 403 and self._legacy(cname):
                        log.warning("dead replica left behind: %s", self._legacy_advice(cname))
                        continue
                    raise
                log.info("removed dead replica container %s", cname)
            except (*_ENGINE_ERRORS, BackendError) as exc:
                log.warning("skipping container %s during adoption: %s", container.id[:12], exc)
        return handles

    def _command(self, name: str, ring_id: int) -> dict[str, list[str]]:
        port = self._docker_config.replica_port
        cmd = container_command(self._config.replica_cmd, port=port, name=name, ring_id=ring_id)
        return {"Cmd": cmd} if cmd else {}

    def _env(self, name: str, ring_id: int) -> dict[str, str]:
        port = self._docker_config.replica_port
        return replica_env(port=port, name=name, ring_id=ring_id, extra=self._config.replica_env)

    def _container_config(self, name: str, ring_id: int, token: str) -> dict[str, Any]:
        dc = self._docker_config
        port = dc.replica_port
        return {
            "Image": dc.image,
            # --replica-cmd (split, no shell); absent: the image's own command.
            **self._command(name, ring_id),
            "Hostname": name,
            "Env": [f"{k}={v}" for k, v in self._env(name, ring_id).items()],
            "Labels": self._labels(name, ring_id, token),
            "ExposedPorts": {f"{port}/tcp": {}},
            # The balancer's own heartbeats decide health; the image's HEALTHCHECK would
            # only add a process spawn every few seconds per replica.
            "Healthcheck": {"Test": ["NONE"]},
            "HostConfig": {
                "NetworkMode": dc.network,
                "Memory": dc.memory_mb * 1024 * 1024,
                "NanoCpus": int(dc.cpus * 1e9),
                "PidsLimit": 256,
                "RestartPolicy": {"Name": "no"},
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges"],
                "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m"}},
            },
            "NetworkingConfig": {"EndpointsConfig": {dc.network: {"Aliases": [name]}}},
        }

    async def _remove_stale(self, name: str) -> None:
        """Free ``name`` if a dead container of ours holds it; refuse if a stranger does."""
        cname = self.container_name(name)
        try:
            info = await self.docker.containers.get(cname)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return
            raise
        labels = info["Config"]["Labels"] or {}
        if labels.get(LABEL_POOL) != self._docker_config.pool:
            raise Conflict(
                f"a container named {cname!r} already exists and does not belong to pool "
                f"{self._docker_config.pool!r}; choose another hostname"
            )
        await self._by_name(name).delete(force=True)

    async def _engine(self, step: str, call: Awaitable[T]) -> T:
        """Every engine call of a launch passes here, named by ``step``.

        A fault-injection test overrides it to cancel the launch while each real call is
        in flight (tests/test_docker_launch.py).
        """
        return await call

    async def launch(self, name: str, ring_id: int) -> ReplicaHandle:
        """Create and start a container; a cancelled caller still gets it removed."""
        token = uuid.uuid4().hex
        return await launch_or_undo(
            self._launch(name, ring_id, token),
            lambda task: self._undo(task, name, token),
            self._undoing,
        )

    async def _launch(self, name: str, ring_id: int, token: str) -> ReplicaHandle:
        container = None
        try:
            await self._engine("remove_stale", self._remove_stale(name))
            await self._engine(
                "create",
                self.docker.containers.create(
                    self._container_config(name, ring_id, token),
                    name=self.container_name(name),
                ),
            )
            container = self._by_name(name)
            await self._engine("start", container.start())
            handle = self._handle_from(await self._engine("show", container.show()))
        except BaseException as exc:
            # Never leak a half-made container, whatever cut the launch short.
            await asyncio.shield(self._remove_launch(container, name, token))
            if isinstance(exc, LbproxyError) or not isinstance(exc, _ENGINE_ERRORS):
                raise
            raise _engine_error(f"starting replica container {name!r}", exc) from exc
        log.info("launched container %r (%s) at %s", name, handle.backend_id[:12], handle.url)
        return handle

    async def _remove_launch(self, container: Any, name: str, token: str) -> None:
        """Remove the container launch ``token`` made (by object, else by name and token)."""
        with contextlib.suppress(*_ENGINE_ERRORS):
            if container is None:
                # The create call may have failed on our side after the engine made it.
                found = await self.docker.containers.get(self.container_name(name))
                labels = found["Config"]["Labels"] or {}
                if labels.get(LABEL_LAUNCH) != token:
                    return
                container = self._by_name(name)
            await container.delete(force=True)

    async def _undo(self, task: asyncio.Task[ReplicaHandle], name: str, token: str) -> None:
        """A cancelled caller's launch: let it settle, then remove what it made."""
        try:
            handle = await task
        except BaseException:
            return  # _launch removed its own leftovers
        with contextlib.suppress(*_ENGINE_ERRORS, BackendError):
            await self.stop(handle, timeout=0.0)
        log.info("removed container %r of a cancelled launch", name)

    async def stop(self, handle: ReplicaHandle, *, timeout: float) -> None:
        """Stop and remove the incarnation ``handle`` names, addressed by container name.

        The ID is looked up first (a read): the name may already belong to a newer
        incarnation, which must not be stopped in the old one's place.
        """
        try:
            info = await self.docker.containers.get(handle.backend_id)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return  # gone already
            raise _engine_error(f"removing replica container {handle.name!r}", exc) from exc
        except _ENGINE_ERRORS as exc:
            raise _engine_error(f"removing replica container {handle.name!r}", exc) from exc
        name = str(info["Name"]).lstrip("/")
        # A container an older lbproxy named after the bare hostname: by ID (which works
        # on a plain socket; the proxy refuses it, and the error says what to run).
        container = self.docker.containers.container(
            name if name == self.container_name(handle.name) else handle.backend_id
        )
        try:
            if timeout > 0:  # else a fast stop: force-remove kills at once
                with contextlib.suppress(aiodocker.DockerError):
                    await container.stop(t=max(0, math.ceil(timeout)))
            await container.delete(force=True)
        except aiodocker.DockerError as exc:
            if exc.status == 403 and self._legacy(name):
                raise BackendError(self._legacy_advice(name)) from exc
            if exc.status != 404:
                raise _engine_error(f"removing replica container {handle.name!r}", exc) from exc
        except _ENGINE_ERRORS as exc:
            raise _engine_error(f"removing replica container {handle.name!r}", exc) from exc

    async def list(self) -> list[ReplicaHandle]:
        """This pool's running containers (one that vanishes while listed is skipped)."""
        try:
            containers = await self.docker.containers.list(
                filters=json.dumps({"label": self._pool_filter()})
            )
        except _ENGINE_ERRORS as exc:
            raise _engine_error("listing this pool's containers", exc) from exc
        handles: list[ReplicaHandle] = []
        for container in containers:
            info: dict[str, Any] = {}
            try:
                info = await container.show()
                if info["State"]["Running"]:
                    handles.append(self._handle_from(info))
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise _engine_error("inspecting this pool's containers", exc) from exc
            except BackendError as exc:  # running but not on our network: still ours
                log.warning("container %s: %s", container.id[:12], exc)
                labels = info["Config"]["Labels"] or {}
                handles.append(ReplicaHandle(labels.get(LABEL_REPLICA, ""), "", container.id, 0))
            except _ENGINE_ERRORS as exc:
                raise _engine_error("inspecting this pool's containers", exc) from exc
        return handles

    # -- death events ------------------------------------------------------------------------

    def on_resync(self) -> None:
        if self._on_death is not None:
            self._on_death(BackendEvent("", "", "Docker event stream (re)opened", RESYNC))

    def on_event(self, event: Mapping[str, Any]) -> None:
        """A ``die`` event of one of this pool's containers."""
        actor = event.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        container_id = actor.get("ID") or event.get("id", "")
        name = attributes.get(LABEL_REPLICA)
        if not name or self._on_death is None:
            return
        code = attributes.get("exitCode", "?")
        self._on_death(BackendEvent(name, container_id, f"container died (exit code {code})"))
