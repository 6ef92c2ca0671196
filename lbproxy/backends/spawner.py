"""Starting replica processes without stalling the event loop.

``asyncio.create_subprocess_exec`` forks on the loop thread and waits there until the child
has called ``exec`` (uvloop's ``uv_spawn`` and CPython's ``Popen`` both do). On a busy
machine the new child first waits for a CPU, so every spawn stalled the loop, and every
request in flight, for 9-12 ms (measured with a loop-lag probe during ``/add`` on two busy
cores; docs/performance.md, "The balancer's own share"). Here the fork and the wait for
``exec`` happen on one dedicated thread instead (``Popen`` releases the GIL while it waits),
and the loop learns of the child's exit through a pidfd (Linux 5.3+), so nothing about a
replica's life blocks the loop.

Why one long-lived thread: Linux sends the parent-death signal (``PR_SET_PDEATHSIG``, set in
the child) when the *thread* that forked the child ends, not the process. A pool thread that
ended when idle would kill its replicas; this one lives until the backend closes.

Where pidfds do not exist, ``spawn_supported()`` is False and the backend keeps
``asyncio.create_subprocess_exec``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

__all__ = [
    "Child",
    "Spawner",
    "parent_death_argv",
    "parent_death_wrapper",
    "spawn_supported",
]

_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM this child when its parent dies (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@functools.cache
def parent_death_wrapper() -> str | None:
    """util-linux's ``setpriv``, where it can set the parent-death signal (2.33+), else None.

    With it the child runs no Python before ``exec``, so CPython starts it with ``vfork``
    instead of ``fork``: a fork of the balancer (tens of MiB) copy-on-write-faulted the
    loop's pages until the child exec'd, holding the loop 4.9-5.8 ms a spawn against
    1.6 ms with vfork (a loop-lag probe, docs/performance.md, "The balancer's own share").
    Looked up once, when the backend opens.
    """
    path = shutil.which("setpriv")
    if path is None:
        return None
    try:
        usage = subprocess.run(
            [path, "--help"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return path if "--pdeathsig" in usage else None


def parent_death_argv(argv: Sequence[str]) -> tuple[list[str], Callable[[], None] | None]:
    """``argv`` and the ``preexec_fn`` that make Linux SIGTERM the child when the thread
    that started it dies: ``setpriv --pdeathsig TERM -- argv`` (it execs ``argv`` in the
    same process, so the pid, the session and the signal are the same), or ``prctl`` from
    Python in the child where there is no such setpriv."""
    wrapper = parent_death_wrapper()
    if wrapper is None:
        return list(argv), _set_parent_death_signal
    return [wrapper, "--pdeathsig", "TERM", "--", *argv], None


def spawn_supported() -> bool:
    """True where the loop can watch a child's exit through a pidfd (Linux 5.3+)."""
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError:
        return False
    os.close(fd)
    return True


class Child:
    """A started replica process, with the part of ``asyncio.subprocess.Process``'s surface
    the backend uses: ``pid``, ``returncode`` and ``await wait()``.

    Its exit is read on the loop from a pidfd: readable once the child has exited, then
    reaped with a non-blocking ``waitpid`` (``Popen.poll``).
    """

    def __init__(self, popen: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._popen = popen
        self._loop = loop
        self._exited = asyncio.Event()
        self._pidfd: int | None = os.pidfd_open(popen.pid)
        loop.add_reader(self._pidfd, self._on_readable)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def _on_readable(self) -> None:
        if self._popen.poll() is None:
            return  # not reaped yet (cannot happen once the pidfd is readable; be safe)
        self._close_pidfd()
        self._exited.set()

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def wait(self) -> int:
        """The exit status once the process has ended (negative: killed by that signal)."""
        await self._exited.wait()
        code = self._popen.returncode
        assert code is not None
        return code


class Spawner:
    """Forks replica processes on one dedicated thread; see the module docstring."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lbproxy-spawn")
        self._lock = threading.Lock()
        self._closed = False

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        preexec_fn: Callable[[], None] | None,
    ) -> Child:
        """Start ``argv`` in a session of its own, stdin and stdout on /dev/null.

        Raises ``OSError`` as ``create_subprocess_exec`` would (command not found...).
        """
        loop = asyncio.get_running_loop()

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                # Its own process group (killed as one) that a terminal's Ctrl-C misses.
                start_new_session=True,
                preexec_fn=preexec_fn,  # only prctl in the child
            )

        with self._lock:
            if self._closed:
                raise OSError("the replica spawner is closed")
            future = loop.run_in_executor(self._thread, start)
        try:
            popen = await asyncio.shield(future)
        except asyncio.CancelledError:
            # Cancelled while the thread forks: the child exists once it returns; stop it.
            with contextlib.suppress(Exception):
                popen = await future
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(popen.pid, 9)
                await loop.run_in_executor(None, popen.wait)
            raise
        return Child(popen, loop)

    def close(self) -> None:
        """End the thread (after the replicas it started have been stopped: its end sends
        them the parent-death signal)."""
        with self._lock:
            self._closed = True
        self._thread.shutdown(wait=False)
