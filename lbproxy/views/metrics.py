"""Prometheus metrics at /lbproxy/metrics, read from the counters the balancer keeps anyway.

The request path only bumps plain integers (per-replica status counts, a latency bucket);
this collector turns them into Prometheus families at scrape time, so metrics cost the hot
path nothing beyond those increments. prometheus-client does the exposition format.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from lbproxy.control.pool import ReplicaState
from lbproxy.frontend.relay import LATENCY_BUCKETS

if TYPE_CHECKING:
    from lbproxy.app import Balancer
    from lbproxy.control.autoscale import Autoscaler


class BalancerCollector(Collector):
    """Exposes one balancer's pool, proxy and health counters."""

    def __init__(self, balancer: Balancer) -> None:
        self._b = balancer

    def collect(self) -> Iterator[Metric]:
        b = self._b
        pool, stats = b.pool, b.stats

        requests = CounterMetricFamily(
            "lbproxy_replica_responses",
            "Responses relayed from each replica, by HTTP status",
            labels=["replica", "code"],
        )
        in_flight = GaugeMetricFamily(
            "lbproxy_replica_in_flight", "Requests in flight per replica", labels=["replica"]
        )
        up = GaugeMetricFamily(
            "lbproxy_replica_up", "1 if the replica is on the ring and serving", labels=["replica"]
        )
        ejections = CounterMetricFamily(
            "lbproxy_replica_ejections",
            "Times a replica was ejected after failed requests in a row",
            labels=["replica"],
        )
        for replica in pool.replicas():
            for code, count in replica.by_status.items():
                requests.add_metric([replica.name, str(code)], count)
            in_flight.add_metric([replica.name], replica.in_flight)
            up.add_metric([replica.name], 1.0 if replica.state is ReplicaState.UP else 0.0)
            ejections.add_metric([replica.name], replica.ejections)
        yield from (requests, in_flight, up, ejections)

        states = GaugeMetricFamily(
            "lbproxy_replicas", "Replicas in the pool by state", labels=["state"]
        )
        counts = {state.value: 0 for state in ReplicaState}
        for replica in pool.replicas():
            counts[replica.state.value] += 1
        for state, count in counts.items():
            states.add_metric([state], count)
        yield states
        yield GaugeMetricFamily(
            "lbproxy_pool_target", "Replicas the pool should have (N)", value=len(pool)
        )
        yield GaugeMetricFamily(
            "lbproxy_ring_size", "Replicas on the ring", value=len(pool.ring.names)
        )
        yield CounterMetricFamily(
            "lbproxy_ring_builds", "Ring rebuilds (membership changes)", value=pool.ring_builds
        )
        yield CounterMetricFamily(
            "lbproxy_replacements",
            "Failed replicas replaced by a new incarnation",
            value=b.reconciler.replacements,
        )
        yield CounterMetricFamily(
            "lbproxy_heartbeat_failures",
            "Missed heartbeats (each probe that failed)",
            value=b.monitor.failures,
        )
        yield CounterMetricFamily(
            "lbproxy_requests", "Requests the balancer accepted", value=stats.requests
        )
        yield CounterMetricFamily(
            "lbproxy_retries",
            "Requests retried on another replica after a connection failure",
            value=stats.retries,
        )
        errors = CounterMetricFamily(
            "lbproxy_upstream_errors",
            "Failed upstream attempts by kind (connect_refused, reset, read_timeout, ...)",
            labels=["kind"],
        )
        for kind, count in stats.upstream_errors.items():
            errors.add_metric([kind], count)
        yield errors
        answered = CounterMetricFamily(
            "lbproxy_own_errors",
            "Error responses the balancer answered itself, by status",
            labels=["code"],
        )
        for code, count in stats.client_errors.items():
            answered.add_metric([str(code)], count)
        yield answered

        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(LATENCY_BUCKETS, stats.latency_counts, strict=False):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        cumulative += stats.latency_counts[-1]
        buckets.append(("+Inf", cumulative))
        latency = HistogramMetricFamily(
            "lbproxy_request_duration_seconds",
            "Time from a request's head to the end of its response, as the balancer saw it",
        )
        latency.add_metric([], buckets, sum_value=stats.latency_sum)
        yield latency
        upstreams = stats.upstreams
        if upstreams is not None:
            yield CounterMetricFamily(
                "lbproxy_upstream_connects",
                "Upstream connections opened to replicas and the control app",
                value=upstreams.opened,
            )
            yield CounterMetricFamily(
                "lbproxy_queued",
                "Requests that waited in a replica's FIFO queue (--max-conns-per-replica)",
                value=upstreams.queued,
            )
            yield CounterMetricFamily(
                "lbproxy_queue_timeouts",
                "Queued requests answered 503 after --queue-timeout",
                value=upstreams.queue_timeouts,
            )
            yield CounterMetricFamily(
                "lbproxy_queue_redispatched",
                "Queued requests moved to the replica the ring picks after it changed",
                value=upstreams.redispatched,
            )
            yield GaugeMetricFamily(
                "lbproxy_queue_waiting", "Requests waiting in queues now", value=upstreams.waiting()
            )
            yield CounterMetricFamily(
                "lbproxy_upstream_idle_expired",
                "Pooled upstream connections closed after the upstream idle timeout",
                value=upstreams.expired,
            )
        if stats.phases is not None:
            phases = HistogramMetricFamily(
                "lbproxy_phase_seconds",
                "Where requests wait inside the balancer (--phase-timings; docs/performance.md)",
                labels=["phase"],
            )
            for phase, data in stats.phases.snapshot().items():
                phase_buckets = cast(list[tuple[str, float]], data["buckets"])
                phases.add_metric([phase], phase_buckets, sum_value=cast(float, data["sum"]))
            yield phases
        if b.autoscaler is not None:
            yield from _autoscale(b.autoscaler)


def _autoscale(a: Autoscaler) -> Iterator[Metric]:
    """The autoscaler's last decision and its counters (issue 12)."""
    last = a.last
    yield GaugeMetricFamily(
        "lbproxy_autoscale_desired_replicas", "Replicas the autoscaler wants", value=a.desired
    )
    yield GaugeMetricFamily(
        "lbproxy_autoscale_ready_replicas", "Replicas on the ring", value=a.ready()
    )
    yield GaugeMetricFamily(
        "lbproxy_autoscale_bounds_min", "--autoscale MIN", value=a.config.min_replicas
    )
    yield GaugeMetricFamily(
        "lbproxy_autoscale_bounds_max", "--autoscale MAX", value=a.config.max_replicas
    )
    yield GaugeMetricFamily(
        "lbproxy_autoscale_target_concurrency",
        "Desired in-flight requests per replica",
        value=a.config.target,
    )
    concurrency = GaugeMetricFamily(
        "lbproxy_autoscale_observed_concurrency",
        "Mean in-flight requests of the whole pool over each window at the last decision",
        labels=["window"],
    )
    concurrency.add_metric(["stable"], last.stable if last else 0.0)
    concurrency.add_metric(["panic"], last.panic if last else 0.0)
    yield concurrency
    yield GaugeMetricFamily(
        "lbproxy_autoscale_arrival_rate",
        "Requests arriving per second (the last quarter of the panic window) at the last decision",
        value=last.rate if last is not None and last.rate is not None else 0.0,
    )
    yield GaugeMetricFamily(
        "lbproxy_autoscale_service_seconds",
        "Seconds per request (median over the stable window) at the last decision; "
        "rate x service / target sizes a panic",
        value=last.service if last is not None and last.service is not None else 0.0,
    )
    yield GaugeMetricFamily(
        "lbproxy_autoscale_panic",
        "1 while the autoscaler is in panic mode",
        value=1.0 if last is not None and last.panicking else 0.0,
    )
    yield CounterMetricFamily(
        "lbproxy_autoscale_decisions", "Autoscaler decisions (one per tick)", value=a.decisions
    )
    changes = CounterMetricFamily(
        "lbproxy_autoscale_changes",
        "Pool changes the autoscaler made, by direction (failed: the change did not happen)",
        labels=["direction"],
    )
    changes.add_metric(["up"], a.scale_ups)
    changes.add_metric(["down"], a.scale_downs)
    changes.add_metric(["failed"], a.failed_changes)
    yield changes
    yield CounterMetricFamily(
        "lbproxy_autoscale_manual_changes",
        "Operator /add or /rm calls the autoscaler adopted as the current size",
        value=a.manual_changes,
    )
    hold = a.hold
    if hold is not None:
        yield GaugeMetricFamily(
            "lbproxy_autoscale_held_requests",
            "Requests waiting at an empty pool for a replica to start (scale to zero)",
            value=hold.waiting(),
        )
        yield CounterMetricFamily(
            "lbproxy_autoscale_cold_starts",
            "Times held requests were released onto a replica started from zero",
            value=hold.cold_start_count,
        )
        yield GaugeMetricFamily(
            "lbproxy_autoscale_last_cold_start_seconds",
            "From the first held request to the first replica up, at the last cold start",
            value=hold.cold_starts[-1] if hold.cold_starts else 0.0,
        )
        rejected = CounterMetricFamily(
            "lbproxy_autoscale_hold_rejected",
            "Held requests answered 503, by the limit they hit",
            labels=["reason"],
        )
        for reason, count in hold.rejected.items():
            rejected.add_metric([reason], count)
        yield rejected


def register(app: web.Application, balancer: Balancer) -> None:
    """Serve the metrics of ``balancer`` at GET /lbproxy/metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BalancerCollector(balancer))
    registry.register(ProcessCollector(registry=None))

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/lbproxy/metrics", metrics)
