"""Replica backends: where replicas run (local processes, Docker containers, Swarm services).

Each is a sibling module behind ``ReplicaBackend``; ``create_backend`` picks one by name
and imports it lazily, so the process backend never needs aiodocker installed.
"""

from __future__ import annotations

from lbproxy.backends.base import BackendEvent, ReplicaBackend, ReplicaHandle
from lbproxy.config import Config

__all__ = ["BackendEvent", "ReplicaBackend", "ReplicaHandle", "create_backend"]


def create_backend(config: Config) -> ReplicaBackend:
    """The backend ``config.backend`` names."""
    if config.backend == "process":
        from lbproxy.backends.process import ProcessBackend

        return ProcessBackend(config)
    if config.backend == "docker":
        from lbproxy.backends.docker import DockerBackend

        backend: ReplicaBackend = DockerBackend(config)
        return backend
    if config.backend == "swarm":
        from lbproxy.backends.swarm import SwarmBackend

        swarm: ReplicaBackend = SwarmBackend(config)
        return swarm
    raise ValueError(f"unknown backend {config.backend!r}; choose 'process', 'docker' or 'swarm'")
