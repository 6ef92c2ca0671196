"""Every setting of the balancer in one typed object.

The CLI maps flags (and ``LBPROXY_*`` environment variables) onto this object one to one;
the application reads nothing else, so a test builds a ``Config`` and gets the same balancer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

BackendName = Literal["process", "docker"]

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
    #: Consistent hashing with bounded loads: no replica takes more than this factor times
    #: the mean in-flight load; a key whose owner is full goes to the next replica on the
    #: ring. 0 disables (pure consistent hashing).
    bounded_load: float = 0.0
    #: Where the routing key comes from (``--key``, see frontend/routing_key.py); when the
    #: source is absent the request id (X-Request-ID or a random 6-digit id) is the key.
    key: str = "header:X-Request-ID"


@dataclass(frozen=True, slots=True)
class DockerConfig:
    """Where and how the Docker backend creates replica containers."""

    image: str = "lbproxy-server:latest"
    network: str = "lbproxy-net"
    pool: str = "lbproxy"
    replica_port: int = 5000
    memory_mb: int = 128
    cpus: float = 0.5
    docker_url: str | None = None


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
    start_timeout: float = 10.0
    stop_timeout: float = 5.0
    #: When set, /add, /rm and every other mutating endpoint need "Authorization: Bearer".
    admin_token: str | None = None
    #: When set, the balancer's own endpoints listen here only (not on the public port).
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None
    health: HealthConfig = field(default_factory=HealthConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)

    def replace(self, **changes: object) -> Config:
        """A copy with some fields changed (tests use this to shrink intervals)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
