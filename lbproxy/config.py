"""Every setting of the balancer in one typed object.

The CLI maps flags (and ``LBPROXY_*`` environment variables) onto this object one to one;
the application reads nothing else, so a test builds a ``Config`` and gets the same balancer.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Literal

BackendName = Literal["process", "docker", "swarm"]

#: Upper bound on ``n`` for one /add or /rm call: big enough for any sane scaling step,
#: small enough that a typo (n=100000) cannot fork-bomb the host or flood the engine.
MAX_CHANGE_PER_CALL = 64
#: Upper bound on the pool's size, whatever the family could hold.
MAX_POOL_SIZE = 1024


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Heartbeat polling, HAProxy-style: ``fall`` misses mark a replica down, ``rise`` passes up."""

    interval: float = 1.0
    timeout: float = 0.5
    fall: int = 2
    rise: int = 1
    #: What a heartbeat asks (``--health-path``, ``--health-method``) and which statuses
    #: pass (``--health-status``, inclusive range; SPEC: any 2xx).
    path: str = "/heartbeat"
    method: str = "GET"
    status: tuple[int, int] = (200, 299)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Upstream timeouts and retry policy for forwarded requests."""

    connect_timeout: float = 1.0
    read_timeout: float = 30.0
    retries: int = 2
    max_body_bytes: int = 16 * 1024 * 1024
    #: A client must send a whole request head within this many seconds (slowloris guard).
    header_timeout: float = 10.0
    #: An idle keep-alive client connection is closed after this many seconds.
    idle_timeout: float = 60.0
    #: Consecutive failed requests (connect error, reset, timeout, 5xx) that eject a replica
    #: from the ring until its heartbeat passes again; 0 disables passive ejection.
    eject_after: int = 5
    #: Envoy-style ejection time: an ejected replica stays off the ring for this many
    #: seconds times the number of times it was ejected (capped at ``eject_max_time``), then
    #: returns on its next passing heartbeat. Envoy's default is 30 s; replicas here restart
    #: in about a second, so 10 s. 0 readmits on the next passing heartbeat.
    eject_base_time: float = 10.0
    eject_max_time: float = 300.0
    #: At most this share of the members is ejected at once (Envoy's max_ejection_percent);
    #: one replica may always be ejected, and the last one on the ring never is.
    max_eject_percent: int = 50
    #: Consistent hashing with bounded loads: no replica takes more than this factor times
    #: the mean in-flight load; a key whose owner is full goes to the next replica on the
    #: ring. 0 disables (pure consistent hashing).
    bounded_load: float = 0.0
    #: Where the routing key comes from (``--key``, see frontend/routing_key.py); when the
    #: source is absent the request id (X-Request-ID or a random 6-digit id) is the key.
    key: str = "header:X-Request-ID"
    #: A replica's 404 becomes SPEC's 400 "endpoint does not exist in server replicas" body
    #: (``--rewrite-404``). The CLI turns it off unless the replicas are server_app; a
    #: user's own service's 404 passes through unchanged.
    rewrite_404: bool = True
    #: Per-phase latency histograms (head, pipeline, acquire, upstream, relay, loop lag) in
    #: /lbproxy/metrics; off by default because each mark costs a clock read per request.
    phase_timings: bool = False
    #: Upstream connections per replica, at most (HAProxy's server ``maxconn``); requests
    #: beyond wait in the replica's FIFO queue. 0: no cap (a connection per waiting request,
    #: which overran the replicas' accept queues at 1,500 clients: issue 14).
    max_conns_per_replica: int = 128
    #: Seconds a request may wait in that queue before it is answered 503.
    queue_timeout: float = 5.0
    #: Peers (``CIDR,...``) whose X-Forwarded-*/Forwarded fields are kept and appended to;
    #: from anyone else they are replaced (frontend/forwarded.py). Empty: trust nobody.
    trusted_proxies: str = ""
    #: Pooled upstream connections idle this long are closed: below the replica servers'
    #: keep-alive (uvicorn and Node close idle connections after 5 s, aiohttp's server
    #: after 3630 s), so the replica rarely closes one just as a request goes out on it.
    upstream_idle_timeout: float = 4.0


@dataclass(frozen=True, slots=True)
class DockerConfig:
    """Where and how the Docker backend creates replica containers."""

    image: str = "lbproxy-server:latest"
    network: str = "lbproxy-net"
    pool: str = "lbproxy"
    #: The port the replica listens on inside its container (``--replica-port``).
    replica_port: int = 5000
    memory_mb: int = 128
    cpus: float = 0.5
    docker_url: str | None = None


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    """The autoscaler (control/autoscale.py): KPA's model, its windows scaled to one machine.

    Knative's defaults are a 60 s stable window, a 6 s panic window, a 2 s tick and a
    200% panic threshold, tuned for clusters where a pod takes seconds to schedule. A
    process replica here is up in about 0.4 s and a container in about 1.2 s, so the
    windows are shortened (20 s / 2 s, 1 s tick) to react within one tick of a load step
    while the stable window still smooths a single burst away. Off unless ``enabled``.
    """

    enabled: bool = False
    min_replicas: int = 1
    max_replicas: int = 10
    #: Desired in-flight requests per replica (KPA's "concurrency" metric).
    target: float = 10.0
    #: Seconds between decisions.
    tick: float = 1.0
    #: In-flight is sampled this often; the windows average the samples.
    sample_interval: float = 0.05
    stable_window: float = 20.0
    panic_window: float = 2.0
    #: Panic (follow the panic window, never scale down) when it asks for this many times
    #: the ready replicas.
    panic_threshold: float = 2.0
    #: At most ``ceil(rate * ready)`` replicas after one decision (ready 0 counts as 1).
    max_scale_up_rate: float = 10.0
    #: At least ``floor(ready / rate)`` replicas after one decision.
    max_scale_down_rate: float = 2.0
    #: A scale-down follows the highest recommendation of this many seconds (HPA's
    #: stabilisation window): one quiet moment does not shrink the pool.
    scale_down_delay: float = 10.0
    #: Scale to zero (min 0): requests arriving at an empty pool wait this long at most for a
    #: replica to start, and at most this many wait; 503 beyond either.
    hold_timeout: float = 10.0
    hold_queue: int = 1000

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ValueError(
                f"autoscale bounds must satisfy 0 <= MIN <= MAX and MAX >= 1, "
                f"got {self.min_replicas}:{self.max_replicas}"
            )
        if self.panic_window > self.stable_window:
            raise ValueError(
                f"the panic window ({self.panic_window:g}s) must not be longer than the "
                f"stable window ({self.stable_window:g}s)"
            )
        if self.sample_interval > self.tick:
            raise ValueError("the sample interval must not be longer than the tick")
        if self.max_scale_up_rate <= 1 or self.max_scale_down_rate <= 1:
            raise ValueError("scale-up and scale-down rates must be greater than 1")


@dataclass(frozen=True, slots=True)
class SwarmConfig:
    """Swarm backend settings beyond DockerConfig's image, pool, limits and engine URL.

    The replicas' network is an attachable overlay network (the balancer must be attached
    to it too); ``constraints`` are Swarm placement constraints (docs/swarm.md).
    """

    network: str = "lbproxy-swarm"
    #: Placement constraints, e.g. ("node.role==worker", "node.labels.zone==a").
    constraints: tuple[str, ...] = ()
    #: Seconds between full lists of the pool's services and tasks (events come sooner).
    sync_interval: float = 1.0
    #: Stack namespace labelled on replica services so `docker stack rm` removes them.
    stack: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    """The balancer's whole configuration."""

    host: str = "127.0.0.1"
    port: int = 5000
    replicas: int = 3
    backend: BackendName = "process"
    hash: str = "maglev"
    slots: int | None = None
    vnodes: int | None = None
    #: Collision probing of the seed families: "quadratic" (SPEC) or "linear".
    probe: str = "quadratic"
    start_timeout: float = 10.0
    stop_timeout: float = 5.0
    #: The command each replica runs (``--replica-cmd``, backends/command.py); None runs
    #: ``python -m server_app`` (process backend) or the image's own command (docker).
    replica_cmd: str | None = None
    #: Extra ``KEY=VALUE`` environment for every replica (``--replica-env``, repeatable).
    replica_env: tuple[str, ...] = ()
    #: Seconds between resyncs (list what runs, converge on it); events trigger them too.
    resync_interval: float = 10.0
    #: Overall bound on a graceful shutdown; below Compose's 30 s grace before SIGKILL.
    shutdown_timeout: float = 25.0
    #: When set, /add, /rm and every other mutating endpoint need "Authorization: Bearer".
    admin_token: str | None = None
    #: When set, the balancer's own endpoints listen here only (not on the public port).
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None
    #: PEM certificate chain and key: the public listener then speaks TLS only (HTTPS).
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Serve the admin endpoints on a non-loopback public listener with no token anyway
    #: (Traefik's ``api.insecure``). Off: such a balancer refuses to start (admin_exposure).
    insecure_admin: bool = False
    health: HealthConfig = field(default_factory=HealthConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)
    swarm: SwarmConfig = field(default_factory=SwarmConfig)

    def runs_server_app(self) -> bool:
        """True when the replicas are lbproxy's own server_app (the default command/image)."""
        if self.replica_cmd is not None:
            return False
        return self.backend == "process" or self.docker.image == DockerConfig().image

    def replace(self, **changes: object) -> Config:
        """A copy with some fields changed (tests use this to shrink intervals)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or "" (every address): assume reachable from outside


def admin_exposure(config: Config) -> str | None:
    """Why ``config`` would expose /add and /rm unprotected, or None when it does not.

    The admin endpoints ride on the public listener unless ``admin_port`` moves them. On a
    loopback address only this host reaches them; on any other address, anyone who reaches
    the port could add or remove replicas, so a token, a separate admin listener or an
    explicit ``--insecure-admin`` (Traefik's ``api.insecure``) is required.
    """
    if (
        config.admin_token
        or config.admin_port is not None
        or config.insecure_admin
        or _is_loopback(config.host)
    ):
        return None
    return (
        f"the admin endpoints (/add, /rm, ...) would be open to anyone who reaches "
        f"{config.host or '*'}:{config.port}: set an admin token (LBPROXY_ADMIN_TOKEN, or "
        "--admin-token-file with a Docker secret), move them to a separate listener "
        "(--admin-port), or pass --insecure-admin to accept the exposure"
    )
