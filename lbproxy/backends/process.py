"""Replicas as local processes on free loopback ports: ``python -m server_app`` by default,
any command with ``--replica-cmd`` (backends/command.py).

The embedded default: it needs no Docker, so ``make run`` and the fast tests work on any
machine with Python. Each child gets the parent-death signal (Linux) and the parent's pid,
so replicas do not outlive a balancer that is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
from collections import deque
from typing import Protocol

from lbproxy.backends.base import (
    BackendEvent,
    DeathCallback,
    ReplicaHandle,
    launch_or_undo,
    settle,
)
from lbproxy.backends.command import replica_env, substitute, wrapper_script
from lbproxy.backends.spawner import (
    Spawner,
    parent_death_argv,
    parent_death_wrapper,
    spawn_supported,
)
from lbproxy.config import Config
from lbproxy.errors import BackendError, BadRequest

log = logging.getLogger(__name__)

# Process replicas have no hostname of their own, so SPEC's "Server 1" (with a space) is
# allowed here; the Docker backend is stricter because its names become container names.
_PROCESS_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9 _.-]{0,61}[A-Za-z0-9_.-])?$")


#: Ports handed out lately: the kernel may offer a just-released port again before the
#: child we gave it to has bound it, and an /add of 64 would then start two on one port.
_RECENT_PORTS: deque[int] = deque(maxlen=4096)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and we did not hand out lately."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _RECENT_PORTS:
            _RECENT_PORTS.append(port)
            return port
    raise OSError("no free loopback port that was not handed out lately")


class _Proc(Protocol):
    """A replica's leading process: ``spawner.Child``, or asyncio's ``Process`` where the
    spawner cannot run (no pidfds)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


def _signal_group(proc: _Proc, sig: signal.Signals) -> None:
    """Signal the replica's whole process group (its pid is the group id)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class ProcessBackend:
    """Runs each replica as a child process of the balancer."""

    default_prefix = "Server "

    def __init__(self, config: Config) -> None:
        self._config = config
        self._procs: dict[str, tuple[ReplicaHandle, _Proc]] = {}
        #: Forks off the loop thread (a spawn stalled the loop 9-12 ms); None: no pidfds here.
        self._spawner: Spawner | None = Spawner() if spawn_supported() else None
        self._watchers: set[asyncio.Task[None]] = set()
        self._on_death: DeathCallback | None = None
        self._undoing: set[asyncio.Task[None]] = set()

    def validate_name(self, name: object) -> str:
        if not isinstance(name, str):
            raise BadRequest(f"hostname {name!r} must be a string")
        if not _PROCESS_NAME.match(name):
            raise BadRequest(
                f"hostname {name!r} is not a valid replica name: use 1-63 characters from "
                "letters, digits, spaces, '_', '.', '-', starting and ending with a letter "
                "or digit"
            )
        return name

    async def open(self, on_death: DeathCallback) -> None:
        self._on_death = on_death
        parent_death_wrapper()  # looked up now, not at the first launch

    async def close(self) -> None:
        await settle(self._undoing)
        for task in list(self._watchers):
            task.cancel()
        for task in list(self._watchers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # A replica still running here was not stopped by the reconciler (e.g. startup
        # failed half-way): never leave it behind.
        for handle, proc in list(self._procs.values()):
            if proc.returncode is None:
                _signal_group(proc, signal.SIGKILL)
                await proc.wait()
            self._procs.pop(handle.backend_id, None)
        if self._spawner is not None:
            self._spawner.close()

    async def adopt(self) -> list[ReplicaHandle]:
        # Children of an earlier balancer died with it (parent-death signal): none to adopt.
        return []

    async def launch(self, name: str, ring_id: int) -> ReplicaHandle:
        """Spawn the child; a caller cancelled mid-spawn still gets the child stopped."""
        return await launch_or_undo(self._spawn(name, ring_id), self._undo, self._undoing)

    async def _undo(self, spawn: asyncio.Task[ReplicaHandle]) -> None:
        try:
            handle = await spawn
        except Exception:
            return  # nothing was started
        await self.stop(handle, timeout=0.0)

    async def _spawn(self, name: str, ring_id: int) -> ReplicaHandle:
        port = free_loopback_port()
        env = dict(os.environ)
        env.update(
            replica_env(port=port, name=name, ring_id=ring_id, extra=self._config.replica_env),
            HOST="127.0.0.1",
        )
        template = self._config.replica_cmd
        if template is None:
            argv: tuple[str, ...] = (sys.executable, "-m", "server_app")
            # server_app also watches its parent pid; a custom command is covered by its
            # process group instead (its parent is the wrapper shell, not the balancer).
            env["LBPROXY_PARENT_PID"] = str(os.getpid())
        else:
            command = substitute(template, port=port, name=name, ring_id=ring_id)
            argv = ("/bin/sh", "-c", wrapper_script(command, grace=self._config.stop_timeout))
        started, preexec = parent_death_argv(argv)
        proc: _Proc
        try:
            if self._spawner is not None:
                proc = await self._spawner.spawn(started, env=env, preexec_fn=preexec)
            else:
                proc = await asyncio.create_subprocess_exec(
                    *started,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    # Its own process group (killed as one) that a terminal's Ctrl-C misses.
                    start_new_session=True,
                    preexec_fn=preexec,
                )
        except OSError as exc:
            raise BackendError(f"could not start a replica process for {name!r}: {exc}") from exc
        handle = ReplicaHandle(
            name=name, url=f"http://127.0.0.1:{port}", backend_id=str(proc.pid), ring_id=ring_id
        )
        self._procs[handle.backend_id] = (handle, proc)
        task = asyncio.create_task(self._watch(handle, proc), name=f"watch-{name}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        log.info("launched replica %r pid=%s at %s", name, proc.pid, handle.url)
        return handle

    async def _watch(self, handle: ReplicaHandle, proc: _Proc) -> None:
        code = await proc.wait()
        # The leader is gone (killed, crashed, stopped): whatever it started goes too, so a
        # replica killed with -9 leaves no server behind on its port.
        _signal_group(proc, signal.SIGKILL)
        self._procs.pop(handle.backend_id, None)
        if self._on_death is not None:
            reason = f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
            self._on_death(BackendEvent(handle.name, handle.backend_id, reason))

    async def stop(self, handle: ReplicaHandle, *, timeout: float) -> None:
        entry = self._procs.get(handle.backend_id)
        if entry is None:
            return
        proc = entry[1]
        if timeout <= 0:  # a fast stop (cancelled launch, forced shutdown): no grace
            _signal_group(proc, signal.SIGKILL)
            await proc.wait()
            return
        _signal_group(proc, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            log.warning("replica %r did not stop in %.1fs; killing it", handle.name, timeout)
            _signal_group(proc, signal.SIGKILL)
            await proc.wait()
        _signal_group(proc, signal.SIGKILL)  # anything of the group that outlived its leader

    async def list(self) -> list[ReplicaHandle]:
        return [h for h, p in self._procs.values() if p.returncode is None]
