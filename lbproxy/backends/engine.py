"""What the Docker and Swarm backends share: the engine connection, its errors, its events.

Both backends talk to one Docker Engine API with aiodocker (this package is the only place
that imports it). This base class holds the parts that were the same in both: connecting
(patiently, since the engine may sit behind a socket proxy that starts alongside the
balancer), turning engine failures into errors the admin API can show, following the
engine's event stream and resubscribing when it drops, and closing all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import aiodocker
import aiohttp

from lbproxy.backends.base import DeathCallback
from lbproxy.config import Config
from lbproxy.errors import BackendError, Conflict, LbproxyError

log = logging.getLogger(__name__)

ENGINE_ERRORS = (aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError)

#: Seconds between resubscriptions after the event stream dropped.
EVENT_RETRY = 1.0
#: How long ``connect`` keeps trying while nothing listens at the engine's address yet (a
#: socket proxy started with the balancer, an engine restarting).
CONNECT_PATIENCE = 10.0


def engine_error(action: str, exc: Exception) -> LbproxyError:
    """An engine failure as an error a caller can act on (the admin API shows it)."""
    if isinstance(exc, aiodocker.DockerError):
        if exc.status == 409:
            return Conflict(f"{action}: {exc.message}")
        return BackendError(f"{action}: Docker engine said {exc.status}: {exc.message}")
    return BackendError(f"{action}: Docker engine unreachable ({exc})", status=503)


class EngineBackend:
    """The connection and event plumbing of a backend driven through the Engine API.

    Subclasses call ``connect`` (and ``close`` on failure) in their ``open``, start the
    event stream with ``follow_events`` and implement ``on_event`` and ``on_resync``.
    """

    #: Shown in errors: "the Docker backend is not open".
    kind = "Docker"

    def __init__(self, config: Config) -> None:
        self._config = config
        self._docker: aiodocker.Docker | None = None
        self._events_task: asyncio.Task[None] | None = None
        self._on_death: DeathCallback | None = None

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            raise BackendError(f"the {self.kind} backend is not open", status=503)
        return self._docker

    async def connect(self, on_death: DeathCallback) -> None:
        """Open the engine connection and check it answers; ``BackendError`` if it does not.

        A refused connection is retried for ``CONNECT_PATIENCE`` seconds; an engine that
        answers with an error is not (that is not going to change by waiting).
        """
        self._on_death = on_death
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_PATIENCE
        try:
            self._docker = aiodocker.Docker(url=self._config.docker.docker_url)
        except ValueError as exc:  # aiodocker: no socket found and no DOCKER_HOST
            raise BackendError(f"no Docker engine to talk to: {exc}", status=503) from exc
        while True:
            try:
                await self._docker.version()
                return
            except (aiohttp.ClientConnectionError, OSError) as exc:
                if loop.time() >= deadline:
                    await self.close()
                    raise engine_error("connecting to the Docker engine", exc) from exc
                log.info("the Docker engine does not answer yet (%s); retrying", exc)
                await asyncio.sleep(0.25)
            except ENGINE_ERRORS as exc:
                await self.close()
                raise engine_error("connecting to the Docker engine", exc) from exc

    def follow_events(self, filters: Mapping[str, Sequence[str]], name: str) -> None:
        """Start following the engine's events matching ``filters`` (``on_event`` each)."""
        self._events_task = asyncio.create_task(self._watch_events(filters), name=name)

    async def close(self) -> None:
        """Stop following events and release the connection (replicas are untouched)."""
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

    async def _watch_events(self, filters: Mapping[str, Sequence[str]]) -> None:
        """Follow the event stream; resubscribe when it drops (the engine restarted)."""
        encoded = json.dumps(dict(filters))
        while True:
            subscriber = self.docker.events.subscribe(filters=encoded)  # type: ignore[no-untyped-call]
            # Changes while no stream was open (before this one, or in the gap after a
            # dropped one) were never reported: the subclass lists what runs instead.
            self.on_resync()
            try:
                while True:
                    event = await subscriber.get()
                    if event is None:
                        break  # stream ended (engine restarted?): resubscribe
                    self.on_event(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Docker event stream failed; resubscribing")
            with contextlib.suppress(Exception):
                await self.docker.events.stop()  # type: ignore[no-untyped-call]
            await asyncio.sleep(EVENT_RETRY)

    def on_event(self, event: Mapping[str, Any]) -> None:
        """One engine event matching the filters."""
        raise NotImplementedError

    def on_resync(self) -> None:
        """The stream (re)opened: events may have been missed."""
        raise NotImplementedError
