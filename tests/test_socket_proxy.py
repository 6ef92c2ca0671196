"""The Docker socket proxy (socket-proxy/haproxy.cfg) lets the balancer's calls through only.

Runs Debian's HAProxy with the repository's configuration in front of the real Docker socket
(on 127.0.0.1) and sends it what the balancer sends (accepted) and what it must never be
able to (refused with 403): privileged or host-mounting containers, unlabelled ones, exec,
volumes, the swarm itself. Needs `docker info` and `haproxy` on the host.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lbproxy_tools.launcher import docker_engine_answers, free_loopback_port

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
NAME = "lbproxy-socket-proxy-test"
POOL = {"lbproxy.control.pool": "socket-proxy-test", "lbproxy.role": "replica"}

if not docker_engine_answers():
    pytest.skip("no Docker engine answers `docker info`", allow_module_level=True)
if shutil.which("haproxy") is None:
    pytest.skip("HAProxy is not installed (apt-get install haproxy)", allow_module_level=True)


@pytest.fixture(scope="module")
def proxy() -> Iterator[str]:
    port = free_loopback_port()
    haproxy = shutil.which("haproxy")
    assert haproxy is not None
    proc = subprocess.Popen(
        [haproxy, "-db", "-f", str(ROOT / "socket-proxy" / "haproxy.cfg")],
        env={"PROXY_BIND": f"127.0.0.1:{port}", "DOCKER_SOCKET": "/var/run/docker.sock"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import socket

        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, f"HAProxy exited with {proc.returncode}"
                assert time.monotonic() < deadline, "HAProxy did not listen"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1.41"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        subprocess.run(["docker", "rm", "-f", NAME], capture_output=True, check=False)


@pytest.fixture
async def api(proxy: str) -> AsyncIterator[Any]:
    async with aiohttp.ClientSession() as session:

        async def call(method: str, path: str, body: Any = None) -> int:
            async with session.request(method, proxy + path, json=body) as resp:
                await resp.read()
                return resp.status

        yield call


def _container(**host_config: Any) -> dict[str, Any]:
    return {
        "Image": "lbproxy-server:latest",
        "Labels": dict(POOL),
        "HostConfig": {"NetworkMode": "none", **host_config},
    }


async def test_the_balancers_calls_pass(api: Any) -> None:
    assert await api("GET", "/version") == 200
    assert await api("GET", "/containers/json") == 200
    assert await api("GET", "/images/lbproxy-server:latest/json") == 200
    # the Docker backend's whole replica lifecycle: create (labelled), start, stop, remove
    assert await api("POST", f"/containers/create?name={NAME}", _container()) == 201
    assert await api("POST", f"/containers/{NAME}/start") == 204
    assert await api("GET", f"/containers/{NAME}/json") == 200
    assert await api("POST", f"/containers/{NAME}/stop?t=1") == 204
    assert await api("DELETE", f"/containers/{NAME}?force=true") == 204


@pytest.mark.parametrize(
    "body",
    [
        _container(Privileged=True),
        _container(Binds=["/:/host"]),
        _container(Mounts=[{"Type": "bind", "Source": "/etc", "Target": "/x"}]),
        _container(PidMode="host"),
        _container(NetworkMode="host"),
        _container(CapAdd=["SYS_ADMIN"]),
        _container(Devices=[{"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem"}]),
        {"Image": "lbproxy-server:latest", "HostConfig": {"NetworkMode": "none"}},
        {"Image": "lbproxy-server:latest", "Labels": {"lbproxy.control.pool": ""}},
    ],
    ids=[
        "privileged",
        "binds",
        "bind-mount",
        "host-pid",
        "host-network",
        "cap-add",
        "devices",
        "unlabelled",
        "empty-pool-label",
    ],
)
async def test_dangerous_or_foreign_creation_is_refused(api: Any, body: dict[str, Any]) -> None:
    assert await api("POST", f"/containers/create?name={NAME}", body) == 403
    assert await api("GET", f"/containers/{NAME}/json") == 404  # nothing was made


async def test_a_privileged_service_is_refused(api: Any) -> None:
    spec = {
        "Name": NAME,
        "Labels": dict(POOL),
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": "lbproxy-server:latest",
                "Mounts": [{"Type": "bind", "Source": "/", "Target": "/host"}],
            }
        },
    }
    assert await api("POST", "/services/create", spec) == 403


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/containers/x/exec"),
        ("POST", "/volumes/create"),
        ("POST", "/swarm/leave?force=true"),
        ("POST", "/images/create?fromImage=alpine"),
        ("POST", "/build"),
        ("GET", "/secrets"),
        ("DELETE", "/images/lbproxy-server:latest"),
        ("POST", "/plugins/pull"),
    ],
)
async def test_calls_the_balancer_never_makes_are_refused(api: Any, method: str, path: str) -> None:
    assert await api(method, path) == 403
