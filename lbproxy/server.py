"""Runs one balancer: every part started and stopped in one ordered sequence.

Like uvicorn's ``Server``: ``start`` brings the parts up in order (backend, pool, health
and reconcile loops, control app, public listener), ``serve`` waits for SIGTERM/SIGINT,
``stop`` unwinds in reverse under one deadline (``shutdown_timeout``):

1. the reconciler stops replacing and the autoscaler stops (a replica that dies during
   the drain stays dead),
2. the public listener stops accepting, in-flight requests finish (bounded),
3. the background loops stop, every replica is drained and stopped,
4. the control app, the backend and the health session close.

The signal handlers stay installed until ``stop`` has finished: a second SIGTERM/SIGINT
(uvicorn's "force exit") cuts the graceful part short and still runs the fast part,
which kills and removes every replica (Docker containers included) and closes the rest.
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
        self._app: web.Application | None = None
        self._backend_open = False
        self._tasks: list[asyncio.Task[None]] = []
        self._autoscale: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._sockdir: str | None = None
        self._graceful: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self.forced = False
        self.frontend: Frontend | None = None
        self.port = config.port

    @property
    def balancer(self) -> Balancer:
        assert self._app is not None
        return self._app[BALANCER]

    @property
    def app(self) -> web.Application:
        """The control app (admin endpoints and operator views), once started."""
        assert self._runner is not None
        return self._runner.app

    @property
    def url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        scheme = "https" if self.config.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def stopping(self) -> bool:
        return self._stop_task is not None

    async def start(self) -> None:
        """Bring everything up in order; on any failure, undo what was started and re-raise."""
        try:
            # The certificate first: a bad one must not start (then stop) a pool of replicas.
            tls = None
            if self.config.tls_cert:
                tls = server_context(self.config.tls_cert, self.config.tls_key)
            self._app = app = await create_app(self.config, self._backend)
            balancer = self.balancer
            await balancer.backend.open(balancer.reconciler.on_death)
            self._backend_open = True
            # Degraded boot: serves with the replicas that came up, retries the others.
            await balancer.reconciler.start(self.config.replicas)
            await balancer.pool.settled()  # the first ring is built off the loop
            log.info(
                "pool ready: %d of %d replicas on the %s ring",
                len(balancer.pool.ring.names),
                len(balancer.pool),
                balancer.pool.family.name,
            )
            self._tasks = [
                asyncio.create_task(balancer.monitor.run(), name="health"),
                asyncio.create_task(balancer.reconciler.run(), name="reconcile"),
            ]
            if balancer.autoscaler is not None:
                self._autoscale = asyncio.create_task(balancer.autoscaler.run(), name="autoscale")
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
            health = self.config.health
            self.frontend = Frontend(
                balancer.pool,
                self.config.proxy,
                control_key,
                balancer.stats,
                up_within=health.rise * health.interval,
            )
            if balancer.autoscaler is not None and balancer.autoscaler.hold is not None:
                self.frontend.on_empty = balancer.autoscaler.hold.offer  # scale from zero
            balancer.reconciler.on_retired = self.frontend.upstreams.forget_key
            # Queued requests follow the ring when replicas join, die or leave.
            balancer.pool.on_ring_change = self.frontend.ring_changed
            if tls is not None:
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
        """Unwind everything ``start`` did, in reverse, within ``shutdown_timeout``.

        Idempotent and safe to call concurrently: later callers wait for the first.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stop_task)

    def force(self) -> None:
        """Cut a graceful stop short: skip the rest of the drain, kill the replicas now."""
        if not self.forced:
            self.forced = True
            log.warning("forcing a fast stop: replicas are killed and removed now")
        if self._graceful is not None:
            self._graceful.cancel()

    async def _graceful_part(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._app is not None:
            # Dashboard streams never end by themselves; the drain must not wait on them.
            dashboard.close_streams(self._app)
        if self.frontend is not None:
            await self.frontend.drain(self.config.stop_timeout)
        await self._cancel_tasks()
        if self._app is not None and self._backend_open:
            await self.balancer.reconciler.close()

    async def _cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _stop(self) -> None:
        reconciler = self.balancer.reconciler if self._app is not None else None
        if reconciler is not None:
            reconciler.begin_shutdown()  # first: nothing is replaced during the drain
        if self._autoscale is not None:  # nor scaled
            self._autoscale.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._autoscale
            self._autoscale = None
        if not self.forced:
            self._graceful = asyncio.create_task(self._graceful_part(), name="graceful-stop")
            done, _ = await asyncio.wait({self._graceful}, timeout=self.config.shutdown_timeout)
            if not done:
                log.warning(
                    "graceful shutdown exceeded --shutdown-timeout=%gs; stopping fast",
                    self.config.shutdown_timeout,
                )
                self._graceful.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._graceful
            elif not self._graceful.cancelled() and self._graceful.exception() is not None:
                log.error("graceful shutdown failed", exc_info=self._graceful.exception())
        # The fast part always runs: it finishes whatever the graceful part did not.
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.frontend is not None:
            await self.frontend.drain(0)
            self.frontend = None
            if self._app is not None:
                self.balancer.pool.on_ring_change = None
        await self._cancel_tasks()
        if reconciler is not None and self._backend_open:
            await reconciler.close(fast=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._app is not None:
            if self._backend_open:
                await self.balancer.backend.close()
                self._backend_open = False
            await self.balancer.health_session.close()
            self.balancer.pool.close()  # a ring build in flight is abandoned
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then stop; a second signal forces a fast stop.

        The handlers stay installed until the stop has finished, so a second Ctrl-C or
        SIGTERM never kills the balancer half-way (Docker replicas left behind).
        """
        loop = asyncio.get_running_loop()
        requested = asyncio.Event()

        def on_signal(sig: signal.Signals) -> None:
            if not requested.is_set():
                log.info("%s: shutting down: draining requests, stopping replicas", sig.name)
                requested.set()
            else:
                log.warning("second %s during shutdown", sig.name)
                self.force()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            starting = asyncio.ensure_future(self.start())
            waiting = asyncio.ensure_future(requested.wait())
            await asyncio.wait({starting, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()  # a signal during startup: unwind what came up
            with contextlib.suppress(asyncio.CancelledError):
                await starting  # re-raises a startup failure
            await waiting
        finally:
            try:
                await self.stop()
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    with contextlib.suppress(Exception):
                        loop.remove_signal_handler(sig)
