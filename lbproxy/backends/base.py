"""The small interface every replica backend implements: launch, stop, list, death events.

Readiness is not the backend's job: the reconciler waits for a replica's first heartbeat
over HTTP, the same check the monitor runs, so "ready" means the same thing everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from lbproxy.errors import BadRequest


@dataclass(frozen=True, slots=True)
class ReplicaHandle:
    """One running replica as the backend knows it.

    ``url`` is the base URL the balancer forwards to (``http://127.0.0.1:40123``);
    ``backend_id`` is the pid or container id, unique per incarnation, so a death event for
    an old incarnation is never mistaken for one of its replacement.
    """

    name: str
    url: str
    backend_id: str
    ring_id: int = 0  # as recorded by the backend (container label); 0 when unknown


#: ``BackendEvent.kind`` for a death; ``RESYNC`` asks the reconciler to list what runs.
DIED = "died"
RESYNC = "resync"


@dataclass(frozen=True, slots=True)
class BackendEvent:
    """A replica incarnation stopped running (exited, was killed, its container died).

    ``kind`` RESYNC (name and id empty) says the backend may have missed deaths (its event
    stream reconnected): the reconciler then lists what runs and converges on that list.
    """

    name: str
    backend_id: str
    reason: str
    kind: str = DIED


#: Called by the backend from the event loop whenever a replica incarnation dies.
DeathCallback = Callable[[BackendEvent], None]

#: A pool name: it prefixes the pool's container and service names (``<pool>_<hostname>``)
#: and ring-id configs (``<pool>-ring-<id>``), and the socket proxy (socket-proxy/haproxy.cfg)
#: pastes it into the regular expressions that say which names the balancer may change. No
#: regex metacharacter (it would widen those patterns), no '_' (the first '_' must end the
#: pool, or pool ``a`` would reach pool ``a_b``'s names), no character the proxy's patterns
#: refuse; at most 32 characters, which leaves 30 for a hostname in a Swarm service name.
POOL_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9-]{0,31}\Z")


def check_pool_name(pool: str) -> str:
    """``pool`` if the socket proxy can match exactly its names, else ValueError (a sentence)."""
    if not POOL_NAME.match(pool):
        raise ValueError(
            f"{pool!r} cannot name a pool: use 1-32 letters, digits and '-', starting with a "
            "letter or digit (it prefixes the pool's container and service names, and the "
            "socket proxy matches that prefix by pattern: '_', '.' or other characters would "
            "let it reach other pools' objects or refuse the pool's own)"
        )
    return pool


# RFC 1123 host label characters; Docker container names allow the same plus '_' and '.'.
_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def validate_hostname(name: object) -> str:
    """A replica name usable as a container name and hostname, or ``BadRequest``."""
    if not isinstance(name, str):
        raise BadRequest(f"hostname {name!r} must be a string")
    if not _HOSTNAME.match(name):
        raise BadRequest(
            f"hostname {name!r} is not a valid host/container name: use 1-63 characters "
            "from letters, digits, '_', '.', '-', starting with a letter or digit"
        )
    return name


T = TypeVar("T")


async def launch_or_undo(
    work: Coroutine[Any, Any, T],
    undo: Callable[[asyncio.Task[T]], Awaitable[None]],
    pending: set[asyncio.Task[None]],
) -> T:
    """Run a launch to completion even if the caller is cancelled, then undo it.

    Cancelling an engine call half-way does not cancel what the engine does (a container
    create that the client gave up on still creates the container), so the launch itself
    is shielded: a cancelled caller waits for the launch to settle and for ``undo`` to
    remove whatever it made, then sees its ``CancelledError``. A second cancellation
    during the undo leaves it running in ``pending``, which the backend's ``close`` awaits.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        cleanup = asyncio.ensure_future(undo(task))
        pending.add(cleanup)
        cleanup.add_done_callback(pending.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(cleanup)
        raise


async def settle(pending: set[asyncio.Task[None]]) -> None:
    """Wait for undo tasks ``launch_or_undo`` left running (a backend's close)."""
    while pending:
        await asyncio.gather(*list(pending), return_exceptions=True)


class ReplicaBackend(Protocol):
    """Starts and stops replicas; reports deaths. Never called on the request path."""

    #: Prefix of generated names ("Server " gives "Server 4"); must yield valid names.
    default_prefix: str

    def validate_name(self, name: object) -> str:
        """The name if this backend can run a replica under it, else ``BadRequest``."""
        ...

    async def open(self, on_death: DeathCallback) -> None:
        """Connect (to the engine), start watching for deaths, prepare networks."""
        ...

    async def close(self) -> None:
        """Release connections; does not stop replicas (the reconciler does that first)."""
        ...

    async def adopt(self) -> list[ReplicaHandle]:
        """Replicas of this pool already running from an earlier balancer, to reuse."""
        ...

    async def launch(self, name: str, ring_id: int) -> ReplicaHandle:
        """Start a replica named ``name``; returns once it runs (not necessarily ready).

        ``ring_id`` is recorded where the backend can (a container label) so that a balancer
        that adopts the replica after a restart puts it back on the same ring slots.
        """
        ...

    async def stop(self, handle: ReplicaHandle, *, timeout: float) -> None:
        """Stop gracefully (SIGTERM), kill after ``timeout``, remove what it leaves behind."""
        ...

    async def list(self) -> list[ReplicaHandle]:
        """Replicas of this pool that currently run, as the backend sees them."""
        ...
