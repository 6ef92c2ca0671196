"""Runs one balancer: the control app on a private unix socket, the public listener, shutdown.

Like uvicorn's ``Server.serve``: ``start`` brings the parts up in order, ``serve`` waits for
SIGTERM/SIGINT, ``stop`` unwinds: stop accepting, let in-flight requests finish (bounded),
then clean the control app up, which stops the reconciler and every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile

from aiohttp import web

from lbproxy.app import BALANCER, Balancer, create_app
from lbproxy.backends import ReplicaBackend
from lbproxy.config import Config
from lbproxy.frontend.relay import Frontend
from lbproxy.frontend.tls import server_context
from lbproxy.views import dashboard

log = logging.getLogger(__name__)


class BalancerServer:
    """One balancer: control app + public listener over the same pool."""

    def __init__(self, config: Config, backend: ReplicaBackend | None = None) -> None:
        self.config = config
        self._backend = backend
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._sockdir: str | None = None
        self.frontend: Frontend | None = None
        self.port = config.port

    @property
    def balancer(self) -> Balancer:
        assert self._runner is not None
        return self._runner.app[BALANCER]

    @property
    def url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        scheme = "https" if self.config.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        """Bring everything up; on any failure, undo what was started and re-raise."""
        try:
            app = await create_app(self.config, self._backend)
            # The pool (replicas included) comes up in runner.setup(), before we listen.
            self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await self._runner.setup()
            self._sockdir = tempfile.mkdtemp(prefix="lbproxy-")
            control = os.path.join(self._sockdir, "control.sock")
            await web.UnixSite(self._runner, control).start()
            control_key: str | None = f"unix:{control}"
            if self.config.admin_port is not None:
                # A separate admin listener: the public port then shadows no path at all.
                admin = web.TCPSite(self._runner, self.config.admin_host, self.config.admin_port)
                await admin.start()
                control_key = None
                log.info("admin endpoints on %s", admin.name)
            balancer = self.balancer
            self.frontend = Frontend(balancer.pool, self.config.proxy, control_key, balancer.stats)
            if balancer.autoscaler is not None and balancer.autoscaler.hold is not None:
                self.frontend.on_empty = balancer.autoscaler.hold.offer  # scale from zero
            tls = None
            if self.config.tls_cert:
                tls = server_context(self.config.tls_cert, self.config.tls_key)
                self.frontend.scheme = b"https"  # X-Forwarded-Proto / Forwarded proto
            self.frontend.start()
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(
                self.frontend.protocol,
                self.config.host,
                self.config.port,
                reuse_address=True,
                backlog=2048,
                ssl=tls,
                # A client that opens a connection and stalls the handshake is cut off like
                # one that stalls its request head (slowloris guard).
                ssl_handshake_timeout=self.config.proxy.header_timeout if tls else None,
            )
            sock = self._server.sockets[0]
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.port = sock.getsockname()[1]
        except BaseException:
            await self.stop()
            raise
        log.info(
            "listening on %s (backend %s, %d replicas, %s ring)",
            self.url,
            self.config.backend,
            len(self.balancer.pool),
            self.balancer.pool.family.name,
        )

    async def stop(self) -> None:
        """Stop accepting, drain in-flight requests, then stop the replicas and the app."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            # Dashboard streams never end by themselves; the drain must not wait on them.
            dashboard.close_streams(self._runner.app)
        if self.frontend is not None:
            await self.frontend.drain(self.config.stop_timeout)
            self.frontend = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
            log.info("shutting down: draining requests, stopping replicas")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            await self.stop()
