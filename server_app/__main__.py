"""``python -m server_app``: run one replica, named by SERVER_ID, on PORT (default 5000).

When the balancer that spawned this process dies (even by SIGKILL), the replica must not
outlive it: Linux's parent-death signal covers that where available, and a watch on the
parent pid (``LBPROXY_PARENT_PID``) covers the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys

from aiohttp import web

from server_app.app import create_app


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """Stop when the spawning balancer is gone (reparenting changes our ppid)."""
    while not stop.is_set():
        if os.getppid() != parent_pid:
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)


async def serve(server_id: str, host: str, port: int, parent_pid: int | None) -> None:
    runner = web.AppRunner(create_app(server_id), access_log=None, handle_signals=False)
    await runner.setup()
    # SO_REUSEADDR lets a replacement bind the port its dead predecessor just released.
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = (
        asyncio.create_task(_watch_parent(parent_pid, stop)) if parent_pid is not None else None
    )
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        await runner.cleanup()


def main() -> None:
    server_id = os.environ.get("SERVER_ID") or socket.gethostname()
    host = os.environ.get("HOST", "0.0.0.0")
    try:
        port = int(os.environ.get("PORT", "5000"))
    except ValueError:
        sys.exit(f"server_app: PORT must be an integer, got {os.environ['PORT']!r}")
    parent = os.environ.get("LBPROXY_PARENT_PID")
    parent_pid = int(parent) if parent and parent.isdigit() else None
    try:
        import uvloop

        uvloop.run(serve(server_id, host, port, parent_pid))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(server_id, host, port, parent_pid))


if __name__ == "__main__":
    main()
