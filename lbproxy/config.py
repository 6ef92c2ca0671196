"""Every setting of the balancer in one typed object.

Each field is declared once, with ``setting()``: its flag, help, parser and bounds. The
CLI's options and ``LBPROXY_*`` variables, ``Config.validate()`` and the README's flag table
are generated from these declarations (lbproxy/settings.py). The application reads nothing
else, so a test builds a ``Config`` and gets the same balancer.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from lbproxy import argtypes
from lbproxy.ring import DEFAULT_FAMILY, FAMILY_NAMES, RingFamily
from lbproxy.settings import check_bounds, count, seconds, setting

BackendName = Literal["process", "docker", "swarm"]

#: Upper bound on ``n`` for one /add or /rm call: big enough for any sane scaling step,
#: small enough that a typo (n=100000) cannot fork-bomb the host or flood the engine.
MAX_CHANGE_PER_CALL = 64
#: Upper bound on the pool's size, whatever the family could hold.
MAX_POOL_SIZE = 1024
#: The autoscaler samples in-flight this often (more often when its tick is shorter).
SAMPLE_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Heartbeat polling, HAProxy-style: ``fall`` misses mark a replica down, ``rise`` passes up."""

    #: Each replica is checked once per interval on its own phase (HAProxy's start_checks):
    #: replica i of N at i/N of it, a replica that joins in the middle of a free gap, so the
    #: probes are spread over the interval instead of sent in one burst (control/health.py).
    interval: float = seconds(
        1.0, "--heartbeat-interval", "seconds between two heartbeats of a replica"
    )
    timeout: float = seconds(0.5, "--heartbeat-timeout", "seconds a heartbeat may take")
    fall: int = count(2, "--fall", "missed heartbeats in a row that mark a replica down")
    rise: int = count(1, "--rise", "passed heartbeats in a row that mark a new replica up")
    #: HAProxy's global ``spread-checks``: each delay between two checks of a replica is
    #: drawn from the interval +/- this percent of it (uniform). 0, HAProxy's default too,
    #: because the phases then stay exactly evenly spread, which is what keeps the probes
    #: from bunching; any jitter accumulates (a random walk) and at N = 100 turns them random
    #: within a minute, up to 6 probes in one 10 ms instead of 1 (bench/heartbeat_spread.py,
    #: docs/convergence.md "Heartbeat schedule"). For checks that must not keep a fixed beat.
    spread_checks: int = setting(
        0,
        "--spread-checks",
        "randomise each heartbeat interval by +/- this percent, 0-50 (HAProxy's spread-checks; "
        "0 keeps the replicas' phases evenly spread)",
        parse=int,
        ge=0,
        le=50,
        doc="randomise each delay between two heartbeats of a replica by +/- this percent of "
        "`--heartbeat-interval`, 0-50 (HAProxy's `spread-checks`); 0 keeps the replicas' "
        "phases evenly spread over the interval",
    )
    #: What a heartbeat asks and which statuses pass (inclusive range; SPEC: any 2xx).
    path: str = setting(
        "/heartbeat",
        "--health-path",
        "path each heartbeat asks for (/ for a service without a health endpoint)",
        parse=argtypes.health_path,
        doc="path each heartbeat asks for (`/` for a service without a health endpoint); any "
        "status in `--health-status` passes",
    )
    method: str = setting(
        "GET",
        "--health-method",
        "method of each heartbeat",
        parse=str.upper,
        choices=("GET", "HEAD"),
    )
    status: tuple[int, int] = setting(
        (200, 299),
        "--health-status",
        "statuses that pass a heartbeat: 2xx, 200 or 200-399",
        parse=argtypes.status_range,
        shown="2xx",
        doc="statuses that pass a heartbeat: `2xx`, `200` or `200-399` (redirects are not "
        "followed)",
    )


def _rewrite_404_auto(config: Config) -> bool:
    return config.runs_server_app()


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Upstream timeouts and retry policy for forwarded requests."""

    connect_timeout: float = seconds(1.0, "--connect-timeout", "seconds to connect to a replica")
    read_timeout: float = seconds(
        30.0, "--read-timeout", "seconds a replica may stay silent mid-response"
    )
    retries: int = count(
        2, "--retries", "other replicas to try when a connection fails", zero_ok=True
    )
    max_body_bytes: int = count(
        16 * 1024 * 1024, "--max-body", "largest request body in bytes (413 beyond)", shown="16 MiB"
    )
    #: A client must send a whole request head within this many seconds (slowloris guard).
    header_timeout: float = seconds(
        10.0,
        "--header-timeout",
        "seconds a client has to send a request head (408 beyond; slowloris guard)",
    )
    #: An idle keep-alive client connection is closed after this many seconds.
    idle_timeout: float = seconds(
        60.0, "--idle-timeout", "seconds an idle keep-alive client connection is kept"
    )
    #: Consecutive failed requests (connect error, reset, timeout, 5xx) that eject a replica
    #: from the ring until its heartbeat passes again; 0 disables passive ejection.
    eject_after: int = count(
        5,
        "--eject-after",
        "failed requests in a row that eject a replica until its heartbeat passes (0: off)",
        zero_ok=True,
    )
    #: Envoy-style ejection time: an ejected replica stays off the ring for this many
    #: seconds times the number of times it was ejected (capped at ``eject_max_time``), then
    #: returns on its next passing heartbeat. Envoy's default is 30 s; replicas here restart
    #: in about a second, so 10 s. 0 readmits on the next passing heartbeat.
    eject_base_time: float = seconds(
        10.0,
        "--eject-base-time",
        "seconds an ejected replica stays out, times its ejections (Envoy; 0: next heartbeat)",
        zero_ok=True,
    )
    eject_max_time: float = seconds(
        300.0, "--eject-max-time", "cap on one ejection's time in seconds", zero_ok=True
    )
    #: At most this share of the members is ejected at once (Envoy's max_ejection_percent);
    #: one replica may always be ejected, and the last one on the ring never is.
    max_eject_percent: int = setting(
        50,
        "--max-eject-percent",
        "most of the pool ejected at once, in percent (one replica may always be)",
        parse=int,
        ge=0,
        le=100,
    )
    #: Consistent hashing with bounded loads: no replica takes more than this factor times
    #: the mean in-flight load; a key whose owner is full goes to the next replica on the
    #: ring. 0 disables (pure consistent hashing).
    bounded_load: float = setting(
        0.0,
        "--bounded-load",
        "cap each replica at this factor times the mean in-flight load, e.g. 1.25 (0: off)",
        parse=float,
        ge=0,
    )
    #: Where the routing key comes from (frontend/routing_key.py); when the source is absent
    #: the request id (X-Request-ID or a random 6-digit id) is the key.
    key: str = setting(
        "header:X-Request-ID",
        "--key",
        "where the routing key comes from: header:NAME, query:NAME, cookie:NAME, client-ip "
        "or path; when absent, the X-Request-ID or a random 6-digit id (the assignment's "
        "behaviour)",
        parse=argtypes.key_source,
        doc="routing key source: `header:NAME`, `query:NAME`, `cookie:NAME`, `client-ip`, `path` "
        "(see [Routing keys](#routing-keys))",
    )
    #: A replica's 404 becomes SPEC's 400 "endpoint does not exist in server replicas" body.
    #: Unset, it is on for server_app replicas only: a user's own service's 404 passes through.
    rewrite_404: bool = setting(
        True,
        "--rewrite-404",
        "turn a replica's 404 into the assignment's 400 'endpoint does not exist' body (default: "
        "on for server_app replicas, off for your own --replica-cmd or image)",
        parse=argtypes.on_off,
        metavar="{on,off}",
        auto=_rewrite_404_auto,
        shown="on for server_app, else off",
    )
    #: Per-phase latency histograms (head, pipeline, acquire, upstream, relay, loop lag) in
    #: /lbproxy/metrics; off by default because each mark costs a clock read per request.
    phase_timings: bool = setting(
        False,
        "--phase-timings",
        "histograms of where requests wait (head, acquire, upstream, ...) in the metrics",
        parse=argtypes.boolean,
        switch=True,
        doc="per-phase wait histograms (`lbproxy_phase_seconds`) in the metrics; see "
        "docs/performance.md",
    )
    #: Upstream connections per replica, at most (HAProxy's server ``maxconn``); requests
    #: beyond wait in the replica's FIFO queue. 0: no cap (a connection per waiting request,
    #: which overran the replicas' accept queues at 1,500 clients: issue 14).
    max_conns_per_replica: int = count(
        128,
        "--max-conns-per-replica",
        "upstream connections per replica at most (HAProxy maxconn); more requests wait in "
        "the replica's FIFO queue (0: no cap)",
        zero_ok=True,
        doc="upstream connections per replica at most (HAProxy `maxconn`; 0: no cap); requests "
        "beyond wait in the replica's FIFO queue, 503 after `--queue-timeout` "
        "(docs/performance.md)",
    )
    #: Seconds a request may wait in that queue before it is answered 503.
    queue_timeout: float = seconds(
        5.0, "--queue-timeout", "seconds a request may wait in a replica's queue before a 503"
    )
    #: Peers whose X-Forwarded-*/Forwarded fields are kept and appended to; from anyone
    #: else they are replaced (frontend/forwarded.py). Empty: trust nobody.
    trusted_proxies: str = setting(
        "",
        "--trusted-proxies",
        "CIDR,... of proxies in front of lbproxy whose X-Forwarded-*/Forwarded fields are "
        "kept and appended to (from anyone else they are replaced)",
        parse=argtypes.cidr_list,
        metavar="CIDR,...",
        shown="none",
        doc="proxies in front of lbproxy: their `X-Forwarded-For/-Proto/-Host` and `Forwarded` are"
        " kept and this hop appended; from any other client they are replaced "
        "([docs/conformance.md](docs/conformance.md))",
    )
    #: Pooled upstream connections idle this long are closed: below the replica servers'
    #: keep-alive (uvicorn and Node close idle connections after 5 s, aiohttp's server
    #: after 3630 s), so the replica rarely closes one just as a request goes out on it.
    upstream_idle_timeout: float = seconds(
        4.0,
        "--upstream-idle-timeout",
        "pooled connections to a replica idle this long are closed (below uvicorn's/Node's 5 s "
        "keep-alive); a request whose pooled connection turns out closed before any response byte "
        "is resent on another connection to the same replica, any method",
    )


@dataclass(frozen=True, slots=True)
class DockerConfig:
    """Where and how the Docker backend creates replica containers."""

    image: str = setting(
        "lbproxy-server:latest", "--docker-image", "replica image (docker and swarm backends)"
    )
    network: str = setting(
        "lbproxy-net", "--docker-network", "network the replica containers join (docker backend)"
    )
    pool: str = setting(
        "lbproxy",
        "--pool",
        "pool name labelled on the containers and services and prefixing their names "
        "(docker and swarm backends): 1-32 letters, digits and '-'",
        parse=argtypes.pool_name,
        doc="pool name labelled on the containers and services and prefixing their names "
        "(docker and swarm backends): 1-32 letters, digits and `-`, starting with a letter or "
        "digit (the socket proxy matches the prefix by pattern; docs/swarm.md)",
    )
    #: The port the replica listens on inside its container.
    replica_port: int = setting(
        5000,
        "--replica-port",
        "the port a replica listens on inside its container (docker backend)",
        parse=int,
        ge=1,
        le=65535,
    )
    memory_mb: int = setting(
        128,
        "--docker-memory",
        "memory limit per replica container in MiB (and per Swarm task)",
        parse=int,
        gt=0,
        unit="MiB",
    )
    cpus: float = setting(
        0.5,
        "--docker-cpus",
        "CPU limit per replica container (and per Swarm task)",
        parse=float,
        gt=0,
    )
    docker_url: str | None = setting(
        None,
        "--docker-url",
        "Docker engine URL for the docker and swarm backends (default: DOCKER_HOST or the local "
        "socket)",
        shown="DOCKER_HOST or the local socket",
    )


def _sample_interval_auto(config: Config) -> float:
    """Sample at least once a tick: a 0.01 s tick samples every 0.01 s."""
    return min(SAMPLE_INTERVAL, config.autoscale.tick)


def _autoscale_bounds(bounds: tuple[int, int]) -> dict[str, Any]:
    return {"enabled": True, "min_replicas": bounds[0], "max_replicas": bounds[1]}


@dataclass(frozen=True, slots=True)
class AutoscaleConfig:
    """The autoscaler (control/autoscale.py): KPA's model, its windows scaled to one machine.

    Knative's defaults are a 60 s stable window, a 6 s panic window, a 2 s tick and a
    200% panic threshold, tuned for clusters where a pod takes seconds to schedule. A
    process replica here is up in about 0.4 s and a container in about 1.2 s, so the
    windows are shortened (20 s / 2 s, 1 s tick) to react within one tick of a load step
    while the stable window still smooths a single burst away. Off unless ``enabled``.
    """

    #: ``--autoscale MIN:MAX`` sets ``enabled``, ``min_replicas`` and ``max_replicas``.
    enabled: bool = setting(
        False,
        "--autoscale",
        "scale the pool between MIN and MAX replicas from its in-flight requests, e.g. 1:10; "
        "MIN 0 scales to zero when idle (off when unset)",
        parse=argtypes.autoscale_bounds,
        metavar="MIN:MAX",
        expand=_autoscale_bounds,
        shown="unset (off)",
        doc="scale the pool between MIN and MAX from its in-flight requests; MIN 0 scales to zero "
        "([docs/autoscale.md](docs/autoscale.md))",
    )
    min_replicas: int = 1
    max_replicas: int = 10
    #: Desired in-flight requests per replica (KPA's "concurrency" metric).
    target: float = setting(
        10.0,
        "--target-concurrency",
        "autoscale: desired in-flight requests per replica",
        parse=float,
        gt=0,
    )
    #: Seconds between decisions.
    tick: float = seconds(
        1.0, "--autoscale-tick", "autoscale: seconds between decisions (KPA: 2 s)"
    )
    #: In-flight is sampled this often (at least once a tick); the windows average samples.
    sample_interval: float = setting(
        SAMPLE_INTERVAL,
        None,
        "seconds between in-flight samples",
        gt=0,
        auto=_sample_interval_auto,
    )
    stable_window: float = seconds(
        20.0,
        "--autoscale-stable-window",
        "autoscale: seconds of in-flight samples a normal decision averages (KPA: 60 s)",
    )
    panic_window: float = seconds(
        2.0,
        "--autoscale-panic-window",
        "autoscale: seconds of in-flight samples the panic check averages (KPA: 6 s)",
    )
    #: Panic (follow the panic window, never scale down) when it asks for this many times
    #: the ready replicas.
    panic_threshold: float = setting(
        2.0,
        "--autoscale-panic-threshold",
        "autoscale: panic when the panic window asks for this many times the ready replicas",
        parse=float,
        gt=0,
    )
    #: At most ``ceil(rate * ready)`` replicas after one decision (ready 0 counts as 1).
    max_scale_up_rate: float = setting(
        10.0,
        "--autoscale-max-scale-up-rate",
        "autoscale: at most this many times the ready replicas after one decision (x10)",
        parse=float,
        gt=1,
    )
    #: At least ``floor(ready / rate)`` replicas after one decision.
    max_scale_down_rate: float = setting(
        2.0,
        "--autoscale-max-scale-down-rate",
        "autoscale: at least 1/this of the replicas remain after one decision (÷2)",
        parse=float,
        gt=1,
    )
    #: A scale-down follows the highest recommendation of this many seconds (HPA's
    #: stabilisation window): one quiet moment does not shrink the pool.
    scale_down_delay: float = seconds(
        10.0,
        "--autoscale-scale-down-delay",
        "autoscale: stabilisation window: seconds of lower recommendations before the pool shrinks",
        zero_ok=True,
    )
    #: Scale to zero (min 0): requests arriving at an empty pool wait this long at most for a
    #: replica to start, and at most this many wait; 503 beyond either.
    hold_timeout: float = seconds(
        10.0,
        "--autoscale-hold-timeout",
        "scale to zero: seconds a request waits for a replica to start (503 beyond)",
    )
    hold_queue: int = count(
        1000,
        "--autoscale-hold-queue",
        "scale to zero: requests that may wait for a replica at once (503 beyond)",
    )

    def check(self) -> str | None:
        """Why these bounds and windows contradict each other (one sentence), or None."""
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            return (
                f"autoscale bounds must satisfy 0 <= MIN <= MAX and MAX >= 1, "
                f"got {self.min_replicas}:{self.max_replicas}"
            )
        if self.max_replicas > MAX_POOL_SIZE:
            return f"--autoscale MAX must be at most {MAX_POOL_SIZE}, got {self.max_replicas}"
        if self.panic_window > self.stable_window:
            return (
                f"the panic window ({self.panic_window:g}s) must not be longer than the "
                f"stable window ({self.stable_window:g}s)"
            )
        if self.sample_interval > self.tick:
            return "the sample interval must not be longer than the tick"
        return None


@dataclass(frozen=True, slots=True)
class SwarmConfig:
    """Swarm backend settings beyond DockerConfig's image, pool, limits and engine URL.

    The replicas' network is an attachable overlay network (the balancer must be attached
    to it too); ``constraints`` are Swarm placement constraints (docs/swarm.md).
    """

    network: str = setting(
        "lbproxy-swarm",
        "--swarm-network",
        "swarm: the replicas' attachable overlay network (the balancer must be on it)",
    )
    #: Placement constraints, e.g. ("node.role==worker", "node.labels.zone==a").
    constraints: tuple[str, ...] = setting(
        (),
        "--swarm-constraints",
        "comma-separated placement constraints, e.g. 'node.role==worker' (swarm)",
        parse=argtypes.constraint_list,
        doc="swarm: comma-separated placement constraints, e.g. "
        "`node.role==worker,node.labels.zone==a`",
    )
    #: Seconds between full lists of the pool's services and tasks (events come sooner).
    sync_interval: float = seconds(
        1.0,
        "--swarm-sync-interval",
        "swarm: full list of the pool's services and tasks at least this often (engine events "
        "trigger one sooner)",
    )
    #: Stack namespace labelled on replica services so `docker stack rm` removes them.
    stack: str = setting(
        "",
        "--swarm-stack",
        "stack namespace labelled on replica services, for `docker stack rm` (swarm)",
        shown="unset",
        doc="swarm: stack namespace labelled on replica services so `docker stack rm` removes them"
        " (stack.yaml sets it)",
    )


def _token_from_file(config: Config) -> str | None:
    """The token in ``admin_token_file`` (surrounding whitespace dropped); ValueError if
    unreadable or empty. Only read when no token came from the flag or the variable."""
    path = config.admin_token_file
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the admin token file {path!r}: {exc}") from exc
    if not token:
        raise ValueError(f"the admin token file {path!r} is empty")
    return token


@dataclass(frozen=True, slots=True)
class Config:
    """The balancer's whole configuration."""

    host: str = setting("127.0.0.1", "--host", "address to listen on (0.0.0.0 in containers)")
    port: int = setting(
        5000, "--port", "port to listen on (0: any free port)", parse=int, ge=0, le=65535
    )
    replicas: int = setting(
        3, "--replicas", "initial pool size N", parse=int, ge=0, le=MAX_POOL_SIZE
    )
    backend: BackendName = setting(  # noqa: RUF009 (a str Literal: immutable)
        "process",
        "--backend",
        "where replicas run: local processes, Docker containers or Swarm services",
        choices=("process", "docker", "swarm"),
        doc="`process` (local `python -m server_app` children), `docker` or `swarm` (one Swarm "
        "service per replica, [docs/swarm.md](docs/swarm.md))",
    )
    hash: str = setting(
        DEFAULT_FAMILY,
        "--hash",
        "ring hash family",
        choices=FAMILY_NAMES,
        doc="ring family: " + ", ".join(f"`{name}`" for name in FAMILY_NAMES),
    )
    slots: int | None = count(
        None,
        "--slots",
        "ring slots / table size (unset: the family's; maglev's is sized to the declared pool)",
        shown="family's",
        doc="ring size / table size (prime for `maglev`; unset, Maglev's table is sized to "
        "`--replicas` or the autoscaler's maximum: 65,537 up to 16 replicas, 4,194,287 from 513)",
    )
    vnodes: int | None = count(
        None, "--vnodes", "virtual nodes per replica (family default if unset)", shown="family's"
    )
    #: Collision probing of the seed families: "quadratic" (SPEC) or "linear".
    probe: str = setting(
        "quadratic",
        "--probe",
        "collision probing of the seed families: slot+1, +4, +9, ... (quadratic, the "
        "assignment's) or slot+1, +2, +3, ... (linear)",
        choices=("quadratic", "linear"),
        doc="collision probing of the seed families: `quadratic` (slot+1, +4, +9, ..., the "
        "assignment's) or `linear` (slot+1, +2, +3, ...)",
    )
    start_timeout: float = seconds(
        10.0, "--start-timeout", "seconds a new replica has to pass its heartbeats"
    )
    stop_timeout: float = seconds(
        5.0, "--stop-timeout", "seconds to drain and stop a replica before killing it"
    )
    #: The command each replica runs (backends/command.py); None runs ``python -m server_app``
    #: (process backend) or the image's own command (docker).
    replica_cmd: str | None = setting(
        None,
        "--replica-cmd",
        "the command each replica runs; {port}, {name}, {ring_id} are substituted and PORT, "
        "SERVER_ID, LBPROXY_RING_ID set (default: python -m server_app on the process "
        "backend, the image's own command on docker)",
        parse=argtypes.replica_template,
        shown="python -m server_app",
        doc="the command each replica runs (process backend; on docker the container's command, "
        "default the image's); `{port}`, `{name}`, `{ring_id}` substituted, `PORT`, "
        "`SERVER_ID`, `LBPROXY_RING_ID` in its environment",
    )
    #: Extra ``KEY=VALUE`` environment for every replica (repeatable).
    replica_env: tuple[str, ...] = setting(
        (),
        "--replica-env",
        "extra environment for every replica, repeatable",
        parse=argtypes.env_pair,
        repeat=True,
        metavar="KEY=VALUE",
        doc="extra environment for every replica, repeatable (`LBPROXY_REPLICA_ENV='A=1 B=\"two "
        "words\"'`)",
    )
    #: Seconds between resyncs (list what runs, converge on it); events trigger them too.
    resync_interval: float = seconds(
        10.0,
        "--resync-interval",
        "how often the reconciler lists what runs and converges on it (orphans removed, missing "
        "replaced)",
    )
    #: Overall bound on a graceful shutdown; below Compose's 30 s grace before SIGKILL.
    shutdown_timeout: float = seconds(
        25.0,
        "--shutdown-timeout",
        "bound on a graceful shutdown (below Compose's 30 s grace); after it (or a second signal) "
        "replicas are killed and removed",
    )
    #: When set, /add, /rm and every other mutating endpoint need "Authorization: Bearer".
    admin_token: str | None = setting(
        None,
        "--admin-token",
        "require 'Authorization: Bearer TOKEN' on /add, /rm and other mutating calls",
        secret=True,
        auto=_token_from_file,
        shown="unset",
        doc="bearer token for mutating admin calls (`Authorization: Bearer TOKEN` on /add, /rm, "
        "PUT /lbproxy/weight)",
    )
    #: A file holding that token (a Docker secret); read only when no token is given.
    admin_token_file: str | None = setting(
        None,
        "--admin-token-file",
        "read the admin token from this file (a Docker secret under /run/secrets/)",
        doc="read that token from a file, e.g. a Docker secret under `/run/secrets/`",
    )
    #: When set, the balancer's own endpoints listen here only (not on the public port).
    admin_host: str = setting("127.0.0.1", "--admin-host", "address of the separate admin listener")
    admin_port: int | None = setting(
        None,
        "--admin-port",
        "serve /rep, /add, /rm and /lbproxy/* on this port only, not the public one",
        parse=int,
        ge=0,
        le=65535,
    )
    #: PEM certificate chain and key: the public listener then speaks TLS only (HTTPS).
    tls_cert: str | None = setting(
        None,
        "--tls-cert",
        "PEM certificate chain: the public listener speaks TLS 1.2+ (ALPN http/1.1)",
        doc="PEM certificate chain: the public listener speaks TLS 1.2+, ALPN `http/1.1`, "
        "`X-Forwarded-Proto: https` (docs/operations.md); plain HTTP when unset",
    )
    tls_key: str | None = setting(
        None,
        "--tls-key",
        "PEM private key for --tls-cert (default: in the cert file)",
        shown="in the cert file",
    )
    #: Serve the admin endpoints on a non-loopback public listener with no token anyway
    #: (Traefik's ``api.insecure``). Off: such a balancer refuses to start (admin_exposure).
    insecure_admin: bool = setting(
        False,
        "--insecure-admin",
        "allow the admin endpoints on a non-loopback listener without a token",
        parse=argtypes.boolean,
        switch=True,
        doc="start even though the admin endpoints are on a non-loopback public listener without a"
        " token (otherwise the balancer refuses, like Traefik without `api.insecure`)",
    )
    #: The event loop (uvloop when installed, unless asked for asyncio) and the log level.
    loop: str = setting(
        "auto",
        "--loop",
        "event loop",
        choices=("auto", "uvloop", "asyncio"),
        doc="event loop: `uvloop` when installed (`auto`), or `asyncio`",
    )
    log_level: str = setting(
        "info", "--log-level", "log level", choices=("debug", "info", "warning", "error")
    )
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

    def validate(self) -> None:
        """Raise ``ConfigError`` (one sentence naming the flag) if a setting is out of its
        declared bounds or contradicts another; the CLI calls it before anything starts."""
        problem = check_bounds(self)
        for check in CROSS_CHECKS:
            if problem is not None:
                raise ConfigError(problem)
            problem = check(self)
        if problem is not None:
            raise ConfigError(problem)


class ConfigError(ValueError):
    """A setting the balancer cannot run with; the message names the flag and says why."""


def declared_pool_size(config: Config) -> int:
    """The largest pool the flags ask for: ``--replicas``, or the autoscaler's maximum."""
    if config.autoscale.enabled:
        return max(config.replicas, config.autoscale.max_replicas)
    return config.replicas


def ring_family(config: Config) -> RingFamily:
    """The ring family the flags ask for; an unset ``--slots`` is sized to the declared pool
    (a table's every change costs O(size) work, docs/ring.md)."""
    from lbproxy.ring import make_family

    return make_family(
        config.hash,
        slots=config.slots,
        vnodes=config.vnodes,
        probe=config.probe,
        pool_size=declared_pool_size(config),
    )


def _ring_check(config: Config) -> str | None:
    """The family refuses some sizes (Maglev's table must be prime): say so before start."""
    try:
        ring_family(config)
    except ValueError as exc:
        reason = str(exc).removeprefix(f"{config.hash}: ")
        given = f" --slots {config.slots}" if config.slots is not None else ""
        given += f" --vnodes {config.vnodes}" if config.vnodes is not None else ""
        if "prime" in reason:
            reason += (
                " (Maglev needs a prime table size: only then does each replica's "
                "permutation reach every entry)"
            )
        return f"--hash {config.hash}{given}: {reason}"
    return None


def _tls_check(config: Config) -> str | None:
    if config.tls_key and not config.tls_cert:
        return "--tls-key needs --tls-cert (the certificate chain it belongs to)"
    return None


def _wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def _admin_port_check(config: Config) -> str | None:
    same = config.admin_host == config.host or _wildcard(config.host)
    if config.admin_port == config.port != 0 and (same or _wildcard(config.admin_host)):
        return (
            f"--admin-port {config.admin_port} is also the public --port: the admin listener "
            "needs a port of its own"
        )
    return None


def _autoscale_check(config: Config) -> str | None:
    return config.autoscale.check()


def _pool_check(config: Config) -> str | None:
    """--pool's parser, for a Config built in code (a test, an embedder)."""
    from lbproxy.backends.base import check_pool_name

    try:
        check_pool_name(config.docker.pool)
    except ValueError as exc:
        return f"--pool {exc}"
    return None


#: Checks across fields, in order; each returns one sentence or None.
CROSS_CHECKS: tuple[Callable[[Config], str | None], ...] = (
    _tls_check,
    _admin_port_check,
    _autoscale_check,
    _pool_check,
    _ring_check,
)


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
