"""Fault injection on the real Docker engine: a launch cancelled at each await point.

Cancelling an engine call client-side does not cancel what the engine does: a container
create the client gave up on still creates the container. Before launches were shielded, a
cancelled launch (an /rm of a replica whose replacement is starting, a shutdown during a
replacement) left a running, labelled container that the next balancer adopted under a
name that had been removed. Here every engine call of a launch gets the cancel while it
is in flight, and afterwards no container of the test's pool may exist.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import aiodocker
import pytest

from lbproxy.backends.base import BackendEvent
from lbproxy.backends.docker import LABEL_POOL, DockerBackend
from lbproxy.config import Config, DockerConfig

pytestmark = [pytest.mark.docker, pytest.mark.slow]

T = TypeVar("T")
STEPS = ("remove_stale", "create", "start", "show")


class _CancelAt(DockerBackend):
    """Cancels the caller's task while the engine call named ``step`` is in flight."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.step = ""
        self.victim: asyncio.Task[Any] | None = None
        self.seen: list[str] = []

    async def _engine(self, step: str, call: Awaitable[T]) -> T:
        self.seen.append(step)
        if step == self.step and self.victim is not None:
            self.victim.cancel()
        return await call


async def _engine() -> aiodocker.Docker:
    """The engine; the docker tier fails (never skips) when it does not answer."""
    docker = aiodocker.Docker()
    await docker.version()
    return docker


@pytest.fixture
async def pool_name() -> AsyncIterator[str]:
    name = f"lbproxy-reconcile-cancel-{os.getpid()}"
    docker = await _engine()
    try:
        yield name
    finally:
        # Whatever the test left (it should be nothing): containers, then the network.
        leftovers = await docker.containers.list(
            all=True, filters=json.dumps({"label": [f"{LABEL_POOL}={name}"]})
        )
        for container in leftovers:
            await container.delete(force=True)
        try:
            network = await docker.networks.get(f"{name}-net")
            await network.delete()
        except aiodocker.DockerError:
            pass
        await docker.close()


async def _pool_containers(pool: str) -> list[str]:
    docker = aiodocker.Docker()
    try:
        found = await docker.containers.list(
            all=True, filters=json.dumps({"label": [f"{LABEL_POOL}={pool}"]})
        )
        return [c.id for c in found]
    finally:
        await docker.close()


@pytest.mark.parametrize("step", STEPS)
async def test_cancelled_docker_launch_leaves_no_container(pool_name: str, step: str) -> None:
    config = Config(
        backend="docker",
        docker=DockerConfig(pool=pool_name, network=f"{pool_name}-net"),
    )
    backend = _CancelAt(config)
    deaths: list[BackendEvent] = []
    await backend.open(deaths.append)
    try:
        backend.step = step
        task = asyncio.create_task(backend.launch(f"{pool_name}-r1", 1))
        backend.victim = task
        with pytest.raises(asyncio.CancelledError):
            await task
        assert step in backend.seen  # the cancel landed while this engine call ran
        assert await _pool_containers(pool_name) == [], f"a container leaked ({step})"
        assert await backend.list() == []
    finally:
        await backend.close()
    assert await _pool_containers(pool_name) == []
