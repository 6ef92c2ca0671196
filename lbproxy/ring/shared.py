"""Ring tables handed from the build worker to the balancer through shared memory.

A Maglev table at the default size is 8-16 MiB (plus up to 7.5 MiB of pair counts at
N = 1000). Returned through the worker's pipe it was unpickled on the balancer's side,
holding the GIL: ~20 ms of event-loop stall for every addition at N = 1000. Instead the
worker writes the arrays into a file on a RAM file system (``/dev/shm``, what POSIX shared
memory is on Linux; the temp directory elsewhere) and sends only its name; the balancer
maps it read-only and uses the arrays in place (``memoryview`` casts, ``np.frombuffer``
where numpy wants them): no copy, a few system calls on the loop.

Nothing may be left behind in ``/dev/shm``:

- the balancer unlinks a segment the moment it maps it (the mapping outlives the name, and
  the memory is freed when the last ring using it is collected), so a mapped ring leaves no
  name to leak whatever happens to the balancer afterwards;
- a segment nobody will map (a build that was cancelled, a worker that died or failed after
  writing, a shutdown) is unlinked by the builder (``lbproxy.ring.offload``), which chose
  the name before the build started and therefore knows it in every case;
- a balancer killed with SIGKILL while the worker had written a segment not yet mapped is
  the one case left: segment names carry the balancer's pid, and the next builder to start
  removes the segments of pids that no longer run (``sweep_stale``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "PREFIX",
    "attach",
    "discard",
    "new_name",
    "segment_dir",
    "sweep_stale",
    "write",
]

#: Every segment's name starts with this, then the balancer's pid and a random token.
PREFIX = "lbproxy-ring-"
_ALIGN = 64


def segment_dir() -> Path:
    """``/dev/shm`` where it exists (Linux), else the temp directory (still page-cached)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def new_name(pid: int | None = None) -> str:
    """A fresh segment name owned by ``pid`` (this process by default)."""
    return f"{PREFIX}{os.getpid() if pid is None else pid}-{secrets.token_hex(8)}"


def write(name: str, parts: Sequence[memoryview]) -> tuple[int, list[tuple[int, int]]]:
    """Create segment ``name`` holding ``parts`` (byte views); (size, [(offset, length)]).

    Space is reserved before anything is written (``posix_fallocate``), so a full RAM file
    system (Docker's default ``/dev/shm`` is 64 MiB) fails here with ``OSError`` instead of
    killing the writer with SIGBUS; the caller then falls back to the pipe. The segment is
    removed if anything fails.
    """
    spans: list[tuple[int, int]] = []
    size = 0
    for part in parts:
        size = -(-size // _ALIGN) * _ALIGN
        spans.append((size, part.nbytes))
        size += part.nbytes
    size = max(size, 1)
    path = segment_dir() / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:  # pragma: no cover - macOS and the like
            os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as mm:
            for part, (offset, length) in zip(parts, spans, strict=True):
                mm[offset : offset + length] = part
    except BaseException:
        discard(name)
        raise
    finally:
        os.close(fd)
    return size, spans


def attach(name: str, size: int) -> mmap.mmap:
    """Map segment ``name`` read-only and unlink it at once (the mapping lives on).

    The mapping is released when the last view of it is gone: keep the returned object (or
    views of it) for as long as the arrays are used.
    """
    path = segment_dir() / name
    try:
        fd = os.open(path, os.O_RDONLY)
    finally:
        # Unlinked whether or not it could be opened: nobody else will ever map it.
        discard(name)
    try:
        return mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)


def discard(name: str) -> None:
    """Remove segment ``name`` if it exists (idempotent, from any thread)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(segment_dir() / name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, and not ours to judge
        return True
    return True


def sweep_stale() -> int:
    """Remove segments whose balancer no longer runs (it was killed mid-build); a count.

    Segments of live processes are left alone: another balancer on the machine may be
    about to map them.
    """
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(segment_dir()):
            if not entry.name.startswith(PREFIX):
                continue
            pid_text = entry.name[len(PREFIX) :].split("-", 1)[0]
            if not pid_text.isdigit() or _alive(int(pid_text)):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed += 1
    return removed
