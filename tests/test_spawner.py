"""Replica processes are forked off the event loop's thread and their exits read from pidfds.

A fork on the loop thread stalled every request in flight for 9-12 ms per spawn on a busy
machine (docs/performance.md, "The balancer's own share"); these pin where the fork runs and
that the loop still learns each exit status, without timing anything.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading

import pytest

from lbproxy.backends import spawner as spawner_module
from lbproxy.backends.base import BackendEvent
from lbproxy.backends.process import ProcessBackend
from lbproxy.backends.spawner import Spawner, parent_death_wrapper, spawn_supported
from lbproxy.config import Config

pytestmark = [
    pytest.mark.inprocess,
    pytest.mark.skipif(not spawn_supported(), reason="no pidfd_open on this kernel"),
]


@pytest.fixture
def forked_on(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread of every ``subprocess.Popen`` call from now on (each still starts)."""
    threads: list[int] = []
    real = subprocess.Popen

    def recording(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        threads.append(threading.get_ident())
        return real(*args, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(spawner_module.subprocess, "Popen", recording)
    return threads


async def test_the_fork_runs_off_the_loop_thread_on_one_thread(forked_on: list[int]) -> None:
    spawner = Spawner()
    try:
        children = [
            await spawner.spawn(["/bin/sh", "-c", "exit 0"], env=dict(os.environ), preexec_fn=None)
            for _ in range(3)
        ]
        assert [await child.wait() for child in children] == [0, 0, 0]
    finally:
        spawner.close()
    loop_thread = threading.get_ident()
    assert loop_thread not in forked_on
    # One long-lived thread: the parent-death signal follows the thread that forked.
    assert len(set(forked_on)) == 1


async def test_exit_codes_and_signals_come_back_through_the_pidfd() -> None:
    spawner = Spawner()
    try:
        exits = await spawner.spawn(
            ["/bin/sh", "-c", "exit 3"], env=dict(os.environ), preexec_fn=None
        )
        assert await exits.wait() == 3 and exits.returncode == 3
        sleeper = await spawner.spawn(["sleep", "60"], env=dict(os.environ), preexec_fn=None)
        assert sleeper.returncode is None
        # its own session: the pid leads its process group, as the backend relies on
        assert os.getpgid(sleeper.pid) == sleeper.pid
        os.killpg(sleeper.pid, signal.SIGKILL)
        assert await sleeper.wait() == -signal.SIGKILL
    finally:
        spawner.close()


async def test_a_missing_command_raises_like_create_subprocess_exec() -> None:
    spawner = Spawner()
    try:
        with pytest.raises(OSError):
            await spawner.spawn(
                ["/nonexistent/lbproxy-replica"], env=dict(os.environ), preexec_fn=None
            )
    finally:
        spawner.close()


async def test_a_closed_spawner_starts_nothing() -> None:
    spawner = Spawner()
    spawner.close()
    with pytest.raises(OSError, match="closed"):
        await spawner.spawn(["/bin/true"], env=dict(os.environ), preexec_fn=None)


async def test_the_process_backend_forks_off_the_loop_thread(forked_on: list[int]) -> None:
    """The failing test first: the backend forked on the loop thread (create_subprocess_exec)."""
    backend = ProcessBackend(Config(replica_cmd="exec sleep 30"))
    deaths: list[BackendEvent] = []
    await backend.open(deaths.append)
    try:
        handle = await backend.launch("S1", 1)
        assert [h.name for h in await backend.list()] == ["S1"]
        await backend.stop(handle, timeout=0.0)
        assert await backend.list() == []
    finally:
        await backend.close()
    assert forked_on and threading.get_ident() not in forked_on


@pytest.fixture
def popen_kwargs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, object]]]:
    """The argv and keyword arguments of every ``subprocess.Popen`` call (each still starts)."""
    calls: list[tuple[list[str], dict[str, object]]] = []
    real = subprocess.Popen

    def recording(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        calls.append((list(argv), kwargs))
        return real(argv, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(spawner_module.subprocess, "Popen", recording)
    return calls


@pytest.mark.skipif(parent_death_wrapper() is None, reason="no setpriv --pdeathsig here")
async def test_the_replica_fork_runs_no_python_in_the_child(
    popen_kwargs: list[tuple[list[str], dict[str, object]]],
) -> None:
    """CPython vforks only without ``preexec_fn``; a fork of the balancer (tens of MiB) with
    Python to run in the child held the loop 4.9-5.8 ms a spawn, against 1.6 ms with vfork
    (a 1 ms loop-lag probe, docs/performance.md). setpriv sets the parent-death signal."""
    backend = ProcessBackend(Config(replica_cmd="exec sleep 30"))
    await backend.open(lambda event: None)
    try:
        handle = await backend.launch("S1", 1)
        await backend.stop(handle, timeout=0.0)
    finally:
        await backend.close()
    [(argv, kwargs)] = popen_kwargs
    assert kwargs.get("preexec_fn") is None
    assert argv[:4] == [parent_death_wrapper(), "--pdeathsig", "TERM", "--"]


PARENT = """
import asyncio, os, sys
from lbproxy.backends.spawner import parent_death_argv
from lbproxy.backends.spawner import Spawner

async def main():
    argv, preexec = parent_death_argv(["sleep", "60"])
    child = await Spawner().spawn(argv, env=dict(os.environ), preexec_fn=preexec)
    print(child.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_a_replica_still_dies_with_the_balancer() -> None:
    """The parent-death signal, whichever way it is set: a balancer killed with -9 leaves no
    replica running (its process group could not be signalled by anyone)."""
    with subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True
    ) as parent:
        try:
            assert parent.stdout is not None
            replica = int(parent.stdout.readline())
            pidfd = os.pidfd_open(replica)
        finally:
            parent.kill()
    try:
        readable, _, _ = select.select([pidfd], [], [], 30)  # the replica's exit, or 30 s
        assert readable, "the replica outlived the balancer"
    finally:
        os.close(pidfd)
