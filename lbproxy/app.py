"""Builds the control application: typed state and admin routes, no lifecycle of its own.

The control app is an ordinary aiohttp application on a private unix socket; the public
listener (frontend/relay.py) relays the reserved paths to it. Starting and stopping the
parts (backend, pool, loops, listeners) is ``server.BalancerServer``'s one ordered
sequence, not aiohttp's cleanup contexts: one owner of the order, one shutdown deadline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from lbproxy.backends import ReplicaBackend, create_backend
from lbproxy.config import Config, ring_family
from lbproxy.control.admin import AdminRoutes, answer_wrong_methods
from lbproxy.control.autoscale import Autoscaler
from lbproxy.control.events import EventLog
from lbproxy.control.health import HealthMonitor
from lbproxy.control.pool import Pool
from lbproxy.control.reconcile import Reconciler
from lbproxy.errors import failure_body
from lbproxy.frontend.relay import ProxyStats
from lbproxy.ring.offload import RingBuilder
from lbproxy.views import dashboard, metrics, openapi

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Balancer:
    """Every long-lived part of one running balancer, for handlers and tests to reach."""

    config: Config
    pool: Pool
    backend: ReplicaBackend
    health_session: aiohttp.ClientSession
    reconciler: Reconciler
    monitor: HealthMonitor
    stats: ProxyStats
    #: With --autoscale only (control/autoscale.py).
    autoscaler: Autoscaler | None = None


BALANCER = web.AppKey("balancer", Balancer)


async def _unknown_endpoint(request: web.Request) -> web.Response:
    return web.json_response(
        failure_body(f"'{request.path}' is not an endpoint of the balancer"), status=404
    )


async def create_app(config: Config, backend: ReplicaBackend | None = None) -> web.Application:
    """The control application for ``config`` (a coroutine: sessions need a running loop).

    Raises ``ConfigError`` first when ``config`` breaks a declared bound or rule: a Config
    built in code (a test, an embedder) gets the checks the CLI's flags get.
    """
    config.validate()
    family = ring_family(config)
    pool = Pool(
        family,
        EventLog(),
        eject_after=config.proxy.eject_after,
        eject_base_time=config.proxy.eject_base_time,
        eject_max_time=config.proxy.eject_max_time,
        max_eject_percent=config.proxy.max_eject_percent,
        builder=RingBuilder(),
    )
    backend = backend if backend is not None else create_backend(config)
    health_session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    reconciler: Reconciler
    if config.backend == "swarm":  # the engine keeps the replicas: see control/swarm.py
        from lbproxy.control.swarm import SwarmReconciler

        reconciler = SwarmReconciler(config, pool, backend, health_session)
    else:
        reconciler = Reconciler(config, pool, backend, health_session)
    monitor = HealthMonitor(pool, health_session, config.health, reconciler.on_heartbeat_down)
    balancer = Balancer(config, pool, backend, health_session, reconciler, monitor, ProxyStats())
    if config.autoscale.enabled:
        balancer.autoscaler = Autoscaler(config.autoscale, pool, reconciler, answers=balancer.stats)

    app = web.Application(client_max_size=64 * 1024)
    app[BALANCER] = balancer
    AdminRoutes(pool, reconciler, config.admin_token).register(app)
    metrics.register(app, balancer)
    dashboard.register(app, balancer)
    openapi.register(app)
    answer_wrong_methods(app)
    app.router.add_route("*", "/{tail:.*}", _unknown_endpoint)
    return app
