"""The Docker backend outside Compose leaves the engine's networks as it found them.

`lbproxy serve --backend docker` creates its replicas' network (``--docker-network``) when
the engine has none of that name, labelled as the pool's (``lbproxy.control.pool`` and
``lbproxy.role=network``), and removes it when it stops if it carries those labels: made
by this run, or by an earlier balancer of the pool that died without removing it. A
network without them (Compose's, or anyone's) is left alone. Compose removes its own
networks on ``down``; a balancer run by hand used to leave its network behind on every
run, and one killed (-9) left it for good (the next balancer found it, so never removed
it). Each run here uses a network name of its own and compares ``docker network ls``
before and after.

Runs whenever `docker info` answers (fails, never skips, when the images cannot be built).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from lbproxy_tools.launcher import (
    clean_env,
    docker_engine_answers,
    free_loopback_port,
    run_balancer,
    serve_command,
)

pytestmark = [pytest.mark.docker]

if not docker_engine_answers():
    pytest.skip("no Docker engine answers `docker info`", allow_module_level=True)


def _docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if check and done.returncode:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _networks() -> set[str]:
    return set(_docker("network", "ls", "--format", "{{.Name}}").split())


@pytest.fixture
def run_names(images: None) -> Iterator[tuple[str, str]]:
    """A pool and a network name of this run's own; whatever is left goes afterwards."""
    run_id = uuid.uuid4().hex[:8]
    pool, network = f"lbproxy-netrun-{run_id}", f"lbproxy-netrun-net-{run_id}"
    try:
        yield pool, network
    finally:
        stray = _docker("ps", "-aq", "--filter", f"label=lbproxy.control.pool={pool}").split()
        if stray:
            _docker("rm", "-f", *stray, check=False)
        _docker("network", "rm", network, check=False)


def _serve(pool: str, network: str) -> list[str]:
    return [
        "--backend", "docker", "--docker-image", "lbproxy-server:latest",
        "--pool", pool, "--docker-network", network, "--stop-timeout", "2",
    ]  # fmt: skip


def test_a_network_the_balancer_created_is_removed_when_it_stops(
    run_names: tuple[str, str],
) -> None:
    pool, network = run_names
    before = _networks()
    assert network not in before
    with run_balancer(*_serve(pool, network), replicas=1, up_timeout=60):
        assert network in _networks()  # made for the replicas
    # stopped (SIGTERM): its replica is removed, and then the network it made
    assert _networks() == before


def _pool_containers(pool: str) -> list[str]:
    return _docker("ps", "-aq", "--filter", f"label=lbproxy.control.pool={pool}").split()


def test_a_network_left_by_a_killed_balancer_is_removed_by_the_next_one(
    run_names: tuple[str, str],
) -> None:
    """A balancer killed (-9) leaves its replicas and its network; the next balancer of the
    pool adopts both, and its clean stop removes them: the network carries the pool's
    labels, so it is the pool's even though that run did not make it."""
    pool, network = run_names
    before = _networks()
    assert network not in before
    with run_balancer(*_serve(pool, network), replicas=1, up_timeout=60) as first:
        first.proc.kill()
        first.proc.wait()
    assert network in _networks() and _pool_containers(pool)  # both left by the crash
    with run_balancer(*_serve(pool, network), replicas=1, up_timeout=60):
        pass
    assert not _pool_containers(pool)
    assert _networks() == before


@pytest.mark.parametrize(
    "labels",
    [
        (),
        # as Compose labels the networks it makes (compose.yaml's lbproxy-net)
        ("com.docker.compose.network=lbproxy-net", "com.docker.compose.project=lbproxy"),
        # another pool's, under this pool's network name
        ("lbproxy.control.pool=someone-elses-pool", "lbproxy.role=network"),
    ],
    ids=["unlabelled", "compose", "another-pool"],
)
def test_a_network_the_balancer_found_is_left_when_it_stops(
    run_names: tuple[str, str], labels: tuple[str, ...]
) -> None:
    pool, network = run_names
    flags = [arg for label in labels for arg in ("--label", label)]
    _docker("network", "create", *flags, network)  # not this pool's: Compose's, anyone's
    before = _networks()
    with run_balancer(*_serve(pool, network), replicas=1, up_timeout=60):
        pass
    assert _networks() == before  # still there: not the balancer's to remove


def test_a_balancer_that_cannot_start_leaves_no_network(run_names: tuple[str, str]) -> None:
    """The network is made before the image is checked: a start that fails there (no such
    image) removes it again on the way out."""
    pool, network = run_names
    before = _networks()
    flags = _serve(pool, network)
    flags[flags.index("lbproxy-server:latest")] = "lbproxy-no-such-image:never"
    cmd = serve_command(free_loopback_port(), 1, *flags)
    done = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "lbproxy-no-such-image:never" in done.stderr
    assert _networks() == before
