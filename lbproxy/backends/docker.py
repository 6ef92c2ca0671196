"""Replicas as Docker containers, driven through the Engine API with aiodocker.

The only module that imports aiodocker. Every container it creates carries labels
(pool, role, replica name, ring id) so the balancer can always tell its own containers
from anything else on the host, adopt them after a restart and clean up after a crash.
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
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiodocker
import aiohttp

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

_EVENT_RETRY = 1.0


def _engine_error(action: str, exc: Exception) -> LbproxyError:
    """An engine failure as an error a caller can act on (the admin API shows it)."""
    if isinstance(exc, aiodocker.DockerError):
        if exc.status == 409:
            return Conflict(f"{action}: {exc.message}")
        return BackendError(f"{action}: Docker engine said {exc.status}: {exc.message}")
    return BackendError(f"{action}: Docker engine unreachable ({exc})", status=503)


_ENGINE_ERRORS = (aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError)

T = TypeVar("T")


class DockerBackend:
    """Creates, watches and removes this pool's replica containers."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._docker_config = config.docker
        # Container names are global on an engine: prefixing generated names with the pool
        # keeps two pools (a test pool beside a user's) from colliding.
        self.default_prefix = f"{config.docker.pool}-"
        self._docker: aiodocker.Docker | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._on_death: DeathCallback | None = None
        self._undoing: set[asyncio.Task[None]] = set()

    # -- helpers -------------------------------------------------------------------------

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            raise BackendError("the Docker backend is not open", status=503)
        return self._docker

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
        self._on_death = on_death
        try:
            self._docker = aiodocker.Docker(url=self._docker_config.docker_url)
            await self._docker.version()
        except _ENGINE_ERRORS as exc:
            await self.close()
            raise _engine_error("connecting to the Docker engine", exc) from exc
        except ValueError as exc:  # aiodocker: no socket found and no DOCKER_HOST
            await self.close()
            raise BackendError(f"no Docker engine to talk to: {exc}", status=503) from exc
        await self._ensure_network()
        await self._ensure_image()
        self._events_task = asyncio.create_task(self._watch_events(), name="docker-events")

    async def close(self) -> None:
        if self._docker is not None:
            await settle(self._undoing)  # cancelled launches still being removed
        if self._events_task is not None:
            self._events_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events_task
            self._events_task = None
        if self._docker is not None:
            with contextlib.suppress(Exception):
                await self._docker.events.stop()  # type: ignore[no-untyped-call]
            await self._docker.close()
            self._docker = None

    async def _ensure_network(self) -> None:
        name = self._docker_config.network
        try:
            await self.docker.networks.get(name)
            return
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise _engine_error(f"looking up network {name!r}", exc) from exc
        except _ENGINE_ERRORS as exc:
            raise _engine_error(f"looking up network {name!r}", exc) from exc
        try:
            await self.docker.networks.create(
                {
                    "Name": name,
                    "Driver": "bridge",
                    "CheckDuplicate": True,
                    "Labels": {LABEL_POOL: self._docker_config.pool},
                }
            )
            log.info("created network %r", name)
        except _ENGINE_ERRORS as exc:
            raise _engine_error(f"creating network {name!r}", exc) from exc

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
                if info["State"]["Running"]:
                    handle = self._handle_from(info)
                    handles.append(handle)
                    log.info("adopted replica %r (%s)", handle.name, handle.backend_id[:12])
                else:
                    await container.delete(force=True)
                    log.info("removed dead replica container %s", info["Name"])
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
        try:
            info = await self.docker.containers.get(name)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return
            raise
        labels = info["Config"]["Labels"] or {}
        if labels.get(LABEL_POOL) != self._docker_config.pool:
            raise Conflict(
                f"a container named {name!r} already exists and does not belong to pool "
                f"{self._docker_config.pool!r}; choose another hostname"
            )
        await info.delete(force=True)

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
            container = await self._engine(
                "create",
                self.docker.containers.create(
                    self._container_config(name, ring_id, token), name=name
                ),
            )
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
                found = await self.docker.containers.get(name)
                labels = found["Config"]["Labels"] or {}
                if labels.get(LABEL_LAUNCH) != token:
                    return
                container = found
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
        container = self.docker.containers.container(handle.backend_id)
        try:
            if timeout > 0:  # else a fast stop: force-remove kills at once
                with contextlib.suppress(aiodocker.DockerError):
                    await container.stop(t=max(0, math.ceil(timeout)))
            await container.delete(force=True)
        except aiodocker.DockerError as exc:
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

    async def _watch_events(self) -> None:
        """Follow the engine's `die` events for this pool; resubscribe if the stream drops."""
        filters = json.dumps(
            {"type": ["container"], "event": ["die"], "label": self._pool_filter()}
        )
        while True:
            subscriber = self.docker.events.subscribe(filters=filters)  # type: ignore[no-untyped-call]
            # Deaths while no stream was open (before this one, or in the gap after a
            # dropped one) were never reported: the reconciler lists what runs instead.
            if self._on_death is not None:
                self._on_death(BackendEvent("", "", "Docker event stream (re)opened", RESYNC))
            try:
                while True:
                    event = await subscriber.get()
                    if event is None:
                        break  # stream ended (engine restarted?): resubscribe
                    self._dispatch(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Docker event stream failed; resubscribing")
            with contextlib.suppress(Exception):
                await self.docker.events.stop()  # type: ignore[no-untyped-call]
            await asyncio.sleep(_EVENT_RETRY)

    def _dispatch(self, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        container_id = actor.get("ID") or event.get("id", "")
        name = attributes.get(LABEL_REPLICA)
        if not name or self._on_death is None:
            return
        code = attributes.get("exitCode", "?")
        self._on_death(BackendEvent(name, container_id, f"container died (exit code {code})"))
