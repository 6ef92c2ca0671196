"""Builds the balancer application: typed state, routes and the lifecycle of its parts.

Startup order is session, backend, pool (adopt + launch), health monitor, reconcile loop;
aiohttp's cleanup_ctx unwinds in reverse, so the reconciler stops replacing before the
replicas are stopped, and the replicas stop before the backend and sessions close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from lbproxy.admin import AdminRoutes
from lbproxy.backends import ReplicaBackend, create_backend
from lbproxy.config import Config
from lbproxy.events import EventLog
from lbproxy.health import HealthMonitor
from lbproxy.pool import Pool
from lbproxy.proxy import Proxy
from lbproxy.reconcile import Reconciler
from lbproxy.ring import make_family

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Balancer:
    """Every long-lived part of one running balancer, for handlers and tests to reach."""

    config: Config
    pool: Pool
    backend: ReplicaBackend
    upstream: aiohttp.ClientSession
    health_session: aiohttp.ClientSession
    proxy: Proxy
    reconciler: Reconciler
    monitor: HealthMonitor


BALANCER = web.AppKey("balancer", Balancer)


def _upstream_session(config: Config) -> aiohttp.ClientSession:
    """The shared keep-alive client: no cookies (one client's must not leak to another's
    requests), no decompression (bytes pass through untouched), no connection cap."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=None)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),
    )


async def _close_sessions(app: web.Application) -> AsyncIterator[None]:
    yield
    balancer = app[BALANCER]
    await balancer.upstream.close()
    await balancer.health_session.close()


async def _backend_ctx(app: web.Application) -> AsyncIterator[None]:
    balancer = app[BALANCER]
    await balancer.backend.open(balancer.reconciler.on_death)
    yield
    await balancer.backend.close()


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    balancer = app[BALANCER]
    try:
        await balancer.reconciler.start(balancer.config.replicas)
        log.info(
            "pool ready: %d replicas on the %s ring",
            len(balancer.pool),
            balancer.pool.family.name,
        )
        yield
    finally:
        await balancer.reconciler.close()


async def _task_ctx(app: web.Application, name: str) -> AsyncIterator[None]:
    balancer = app[BALANCER]
    runner = balancer.monitor.run() if name == "health" else balancer.reconciler.run()
    task = asyncio.create_task(runner, name=name)
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _health_ctx(app: web.Application) -> AsyncIterator[None]:
    async for _ in _task_ctx(app, "health"):
        yield


async def _reconcile_ctx(app: web.Application) -> AsyncIterator[None]:
    async for _ in _task_ctx(app, "reconcile"):
        yield


async def create_app(config: Config, backend: ReplicaBackend | None = None) -> web.Application:
    """The balancer application for ``config`` (a coroutine: sessions need a running loop)."""
    family = make_family(config.hash, slots=config.slots, vnodes=config.vnodes)
    pool = Pool(family, EventLog())
    backend = backend if backend is not None else create_backend(config)
    upstream = _upstream_session(config)
    health_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    reconciler = Reconciler(config, pool, backend, health_session)
    monitor = HealthMonitor(pool, health_session, config.health, reconciler.on_heartbeat_down)
    proxy = Proxy(pool, upstream, config.proxy)
    balancer = Balancer(config, pool, backend, upstream, health_session, proxy, reconciler, monitor)

    app = web.Application(client_max_size=config.proxy.max_body_bytes)
    app[BALANCER] = balancer
    AdminRoutes(pool, reconciler).register(app)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    app.cleanup_ctx.extend([_close_sessions, _backend_ctx, _pool_ctx, _health_ctx, _reconcile_ctx])
    return app
