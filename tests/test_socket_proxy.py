"""The Docker socket proxy (socket-proxy/haproxy.cfg) lets the balancer's calls through only.

Runs the socket-proxy image (scripts/ensure-images.sh builds it; else the host's Debian
HAProxy with the same configuration) in front of the real Docker socket, on 127.0.0.1, and
sends it what the balancer sends (accepted) and what it must never be able to (refused
with 403): privileged or host-mounting containers, unlabelled ones, containers named outside
the pool, starting, stopping or removing anyone else's container (or its own by ID), exec,
volumes, the swarm itself; replicas that publish ports on the host, resolve names their own
way, share another container's namespaces or read another's volumes, secrets or configs,
or run with fewer protections than the backends ask for. Needs `docker info`.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lbproxy.backends.base import ReplicaHandle
from lbproxy.backends.docker import DockerBackend
from lbproxy.backends.swarm import SwarmBackend
from lbproxy.config import Config, DockerConfig, SwarmConfig
from lbproxy.errors import BackendError
from lbproxy_tools.launcher import docker_engine_answers, free_loopback_port

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "lbproxy-socket-proxy:latest"
POOL_NAME = "socket-proxy-test"
NAME = f"{POOL_NAME}_c1"  # the pool's prefix: the only names the proxy lets it change
FOREIGN = "lbproxy-socket-proxy-foreign"
#: A replica container as lbproxy named it before names carried the pool (bare hostname).
LEGACY = "lbproxy-socket-proxy-legacy"
POOL = {"lbproxy.control.pool": POOL_NAME, "lbproxy.role": "replica"}
#: A named volume of someone else's (a refused creation would have made it).
VOLUME = "lbproxy-socket-proxy-foreign"
#: The networks the proxy lets the balancer use (LBPROXY_NETWORK, LBPROXY_SWARM_NETWORK).
NET = f"{POOL_NAME}-net"
SWARM_NET = f"{POOL_NAME}-swarm"
#: The pool's network made beforehand (a container can only join one that exists).
PROXY_ENV = {"LBPROXY_POOL": POOL_NAME, "LBPROXY_NETWORK": NET, "LBPROXY_SWARM_NETWORK": SWARM_NET}

if not docker_engine_answers():
    pytest.skip("no Docker engine answers `docker info`", allow_module_level=True)


def _image_present() -> bool:
    probe = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False)
    return probe.returncode == 0


def _wait_listening(port: int, alive: Any) -> None:
    """Until /_ping answers through the proxy (a published port accepts before it listens)."""
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_ping", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert alive(), "the socket proxy exited"
        assert time.monotonic() < deadline, "the socket proxy did not answer /_ping"
        time.sleep(0.05)


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def proxy() -> Iterator[str]:
    port = free_loopback_port()
    # A stranger's container: the balancer must not be able to stop or remove it.
    _docker("rm", "-f", FOREIGN)
    made = _docker(
        "run", "-d", "--name", FOREIGN, "--network", "none", "python:3.11-slim", "sleep", "300"
    )
    assert made.returncode == 0, made.stderr
    _docker("network", "rm", NET)
    made = _docker("network", "create", "--internal", "--label", f"{POOL_NAME}=test", NET)
    assert made.returncode == 0, made.stderr
    container = ""
    proc: subprocess.Popen[bytes] | None = None
    try:
        if _image_present():
            env = [arg for k, v in PROXY_ENV.items() for arg in ("-e", f"{k}={v}")]
            run = _docker(
                "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:2375",
                "-v", "/var/run/docker.sock:/var/run/docker.sock", *env, IMAGE,
            )  # fmt: skip
            assert run.returncode == 0, run.stderr
            container = run.stdout.strip()

            def alive() -> bool:
                state = _docker("inspect", "-f", "{{.State.Running}}", container).stdout
                return state.strip() == "true"
        else:
            haproxy = shutil.which("haproxy")
            if haproxy is None:
                pytest.fail(f"neither {IMAGE} (scripts/ensure-images.sh) nor haproxy exists")
            proc = subprocess.Popen(
                [haproxy, "-db", "-f", str(ROOT / "socket-proxy" / "haproxy.cfg")],
                env={
                    "PROXY_BIND": f"127.0.0.1:{port}",
                    "DOCKER_SOCKET": "/var/run/docker.sock",
                    **PROXY_ENV,
                },
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            running = proc

            def alive() -> bool:
                return running.poll() is None

        _wait_listening(port, alive)
        yield f"http://127.0.0.1:{port}/v1.41"
    finally:
        if container:
            _docker("rm", "-f", container)
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        _docker("rm", "-f", NAME, FOREIGN, LEGACY)
        _docker("volume", "rm", VOLUME)
        # NET, and what a refused creation would have made had the proxy let it through
        _docker("network", "rm", NET, "someone-elses-net", f"{POOL_NAME}-other")


@pytest.fixture
async def api(proxy: str) -> AsyncIterator[Any]:
    async with aiohttp.ClientSession() as session:

        async def call(method: str, path: str, body: Any = None, *, raw: str = "") -> int:
            """``body`` as JSON, or ``raw`` as it is (JSON that json.dumps cannot write)."""
            sent: dict[str, Any] = {"json": body}
            if raw:
                sent = {"data": raw.encode(), "headers": {"Content-Type": "application/json"}}
            async with session.request(method, proxy + path, **sent) as resp:
                await resp.read()
                if resp.status == 201 and path in ("/services/create", "/configs/create"):
                    # a swarm was active: remove what was made (by ID, past the proxy)
                    kind = path.split("/")[1].removesuffix("s")
                    _docker(kind, "rm", (await resp.json(content_type=None))["ID"])
                if resp.status == 201 and path == "/networks/create":
                    _docker("network", "rm", (await resp.json(content_type=None))["Id"])
                return resp.status

        yield call


def _container(**host_config: Any) -> dict[str, Any]:
    return {
        "Image": "lbproxy-server:latest",
        "Labels": dict(POOL),
        "HostConfig": {"NetworkMode": NET, **host_config},
    }


def _docker_backend(url: str = "") -> DockerBackend:
    docker = DockerConfig(pool=POOL_NAME, network=NET, docker_url=url or None)
    return DockerBackend(Config(backend="docker", docker=docker))


def _swarm_backend() -> SwarmBackend:
    config = Config(
        backend="swarm",
        docker=DockerConfig(pool=POOL_NAME),
        swarm=SwarmConfig(network=SWARM_NET),
    )
    return SwarmBackend(config)


def _balancers_container() -> dict[str, Any]:
    """The body DockerBackend sends for replica ``c1`` (what it must keep sending)."""
    return _docker_backend()._container_config("c1", 1, "token")


def _as_aiodocker_sends(body: dict[str, Any]) -> str:
    """aiodocker's encoding of a container or network creation: keys sorted."""
    return json.dumps(body, sort_keys=True)


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
    # ...and with the very body the Docker backend sends (its network, json-file logs)
    body = _as_aiodocker_sends(_balancers_container())
    assert await api("POST", f"/containers/create?name={NAME}", raw=body) == 201
    assert await api("DELETE", f"/containers/{NAME}?force=true") == 204


async def test_a_start_or_stop_carries_no_body(proxy: str, api: Any) -> None:
    """Before API 1.24 a start could carry a HostConfig, and the engine still takes one under
    such a version in the path (Docker 20.10 with /v1.23: it stored Privileged and Binds on
    the container, then started it): the pool's plain container would run privileged. The
    balancer's start and stop (aiodocker) send no body."""
    assert (
        await api("POST", f"/containers/create?name={NAME}", raw=_as_aiodocker_sends(_CTR)) == 201
    )
    old_api = proxy.removesuffix("/v1.41") + "/v1.23"
    try:
        async with aiohttp.ClientSession() as session:
            for verb in ("start", "stop"):
                url = f"{old_api}/containers/{NAME}/{verb}"
                async with session.post(url, json={"Privileged": True}) as resp:
                    assert resp.status == 403, (verb, resp.status, await resp.text())
        stored = _docker("inspect", "-f", "{{.HostConfig.Privileged}}", NAME).stdout.strip()
        assert stored == "false"
    finally:
        _docker("rm", "-f", NAME)


async def test_only_the_pools_containers_can_be_changed(api: Any) -> None:
    foreign_id = _docker("inspect", "-f", "{{.Id}}", FOREIGN).stdout.strip()
    assert await api("GET", f"/containers/{FOREIGN}/json") == 200  # reading is fine
    for path in (FOREIGN, foreign_id, foreign_id[:12]):
        assert await api("POST", f"/containers/{path}/stop?t=0") == 403
        assert await api("POST", f"/containers/{path}/kill") == 403
        assert await api("DELETE", f"/containers/{path}?force=true") == 403
    assert _docker("inspect", "-f", "{{.State.Running}}", FOREIGN).stdout.strip() == "true"
    # a labelled, harmless container is still refused under a name outside the pool...
    assert await api("POST", f"/containers/create?name={FOREIGN}-2", _container()) == 403
    assert await api("POST", "/containers/create", _container()) == 403  # (no name at all)
    # ...and even the pool's own container may be changed by name only, not by ID
    assert await api("POST", f"/containers/create?name={NAME}", _container()) == 201
    own_id = _docker("inspect", "-f", "{{.Id}}", NAME).stdout.strip()
    assert await api("POST", f"/containers/{own_id}/start") == 403
    assert await api("DELETE", f"/containers/{own_id}?force=true") == 403
    assert await api("DELETE", f"/containers/{NAME}?force=true") == 204


async def test_services_and_configs_only_by_the_pools_names(api: Any) -> None:
    for method, path in (
        ("POST", "/services/someone-else/update?version=1"),
        ("DELETE", "/services/someone-else"),
        ("DELETE", "/configs/someone-else"),
        ("DELETE", f"/configs/{POOL_NAME}-other"),
    ):
        assert await api(method, path, {"Labels": dict(POOL)}) == 403, (method, path)


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
async def test_dangerous_or_unlabelled_creation_is_refused(api: Any, body: dict[str, Any]) -> None:
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


def _service_body(*members: str) -> str:
    """A service creation body with its members in the order given (raw JSON text)."""
    return "{" + ", ".join(members) + "}"


_LABELS = '"Labels": ' + json.dumps(POOL)
_TASK = '"TaskTemplate": {"ContainerSpec": {"Image": "lbproxy-server:latest"}}'


async def test_the_balancers_service_and_ring_claim_creations_pass(api: Any) -> None:
    """The exact bodies the Swarm backend sends get past the proxy (without a swarm the
    engine then answers 503, "not a swarm manager"; with one, 201)."""
    backend = _swarm_backend()
    body = backend.create_body("c1", 1)
    assert await api("POST", "/services/create", raw=body) in (201, 503)
    claim = backend.claim_body(1, "c1")
    assert await api("POST", "/configs/create", raw=claim) in (201, 503)


@pytest.mark.parametrize(
    "body",
    [
        _service_body('"Name": "someone-else_c1"', _LABELS, _TASK),
        _service_body(f'"Name": "{POOL_NAME}-other_c1"', _LABELS, _TASK),
        _service_body('"Name": "c1"', _LABELS, _TASK),
        _service_body(_LABELS, _TASK),
        # the name anywhere but first: the top-level Name cannot be told from a nested one
        _service_body(_LABELS, _TASK, f'"Name": "{NAME}"'),
        # the engine's decoder takes the last of duplicate keys, in any letter case
        _service_body(f'"Name": "{NAME}"', _LABELS, _TASK, '"Name": "someone-else"'),
        _service_body(f'"Name": "{NAME}"', _LABELS, _TASK, '"nAME": "someone-else"'),
        _service_body(f'"Name": "{NAME}"', _LABELS, '"LogDriver": {"Name": "x"}, "name": "y"'),
    ],
    ids=[
        "foreign-name",
        "other-pool-sharing-the-prefix",
        "bare-hostname",
        "no-name",
        "name-last",
        "duplicate-name",
        "duplicate-name-other-case",
        "duplicate-after-log-driver",
    ],
)
async def test_a_service_named_outside_the_pool_is_refused(api: Any, body: str) -> None:
    assert await api("POST", "/services/create", raw=body) == 403


# -- what a creation may join and where its logs may go: what the backends ask for ---------


def _changed(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``body`` with the member at ``path`` ("HostConfig.LogConfig") set (None: removed)."""
    out = copy.deepcopy(body)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return out


def _then(body: dict[str, Any], path: str, key: str, value: Any) -> dict[str, Any]:
    """``body`` with ``key`` added last in the object at ``path``: JSON's duplicate (in
    another letter case) that the engine's decoder takes over the first."""
    out = copy.deepcopy(body)
    node = out
    for part in path.split(".") if path else ():
        node = node[part]
    node[key] = value
    return out


_SYSLOG = {"Type": "syslog", "Config": {"syslog-address": "udp://203.0.113.9:514"}}
_CTR = _balancers_container()
_EP = "NetworkingConfig.EndpointsConfig"


@pytest.mark.parametrize(
    "body",
    [
        _changed(_CTR, "HostConfig.LogConfig", _SYSLOG),
        _changed(_CTR, "HostConfig.LogConfig", {"Type": "gelf", "Config": {}}),
        _then(_CTR, "HostConfig.LogConfig", "type", "syslog"),
        _then(_CTR, "HostConfig", "logconfig", _SYSLOG),
        _changed(_CTR, "HostConfig.NetworkMode", "bridge"),
        _changed(_CTR, "HostConfig.NetworkMode", "someone-elses-net"),
        _changed(_CTR, "HostConfig.NetworkMode", f"container:{FOREIGN}"),
        _changed(_CTR, "HostConfig.NetworkMode", None),
        _then(_CTR, "HostConfig", "networkMode", "bridge"),
        _changed(_CTR, _EP, {"bridge": {"Aliases": ["c1"]}}),
        _changed(_CTR, _EP, {NET: {"Aliases": ["c1"]}, "bridge": {}}),
        _changed(_CTR, _EP, {NET: {"Aliases": ["c1"], "IPAMConfig": {"IPv4Address": "10.9.9.9"}}}),
        _then(_CTR, "NetworkingConfig", "endpointsconfig", {"bridge": {}}),
    ],
    ids=[
        "syslog-driver",
        "gelf-driver",
        "second-type-in-other-case",
        "second-log-config-in-other-case",
        "default-bridge",
        "another-network",
        "another-containers-namespace",
        "no-network-mode",
        "second-network-mode-in-other-case",
        "another-endpoint",
        "a-second-endpoint",
        "endpoint-with-nested-settings",
        "second-endpoints-config-in-other-case",
    ],
)
async def test_a_container_may_log_to_json_file_and_join_the_pools_network_only(
    api: Any, body: dict[str, Any]
) -> None:
    """A remote log driver sends the replica's output off the machine, and a network other
    than the pool's (or another container's namespace) puts it beside someone else's
    services: the Docker backend asks for neither (json-file logs, --docker-network)."""
    for raw in (json.dumps(body), _as_aiodocker_sends(body)):
        assert await api("POST", f"/containers/create?name={NAME}", raw=raw) == 403
    assert await api("GET", f"/containers/{NAME}/json") == 404  # nothing was made


async def test_a_key_spelled_outside_ascii_is_refused(api: Any) -> None:
    """The engine's decoder matches keys case-insensitively with Unicode folding (the Kelvin
    sign is a "k"): a key the patterns cannot read must not pass. The backends send ASCII."""
    body = _then(_CTR, "HostConfig", "Networ\u212amode", "bridge")  # KELVIN SIGN
    raw = json.dumps(body, ensure_ascii=False)  # as UTF-8: a \u escape is refused anyway
    assert await api("POST", f"/containers/create?name={NAME}", raw=raw) == 403
    assert await api("GET", f"/containers/{NAME}/json") == 404


# -- what neither backend asks for: host ports, name resolution, others' namespaces and data,
# fewer protections ----------------------------------------------------------------------

_PUBLISHED = {"5000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "15000"}]}
#: A named volume whose local driver bind-mounts a host path: a bind mount by another name.
_VOLUME_AS_BIND = {
    "Type": "volume",
    "Source": VOLUME,
    "Target": "/x",
    "VolumeOptions": {
        "DriverConfig": {"Name": "local", "Options": {"type": "none", "o": "bind", "device": "/"}}
    },
}
_DEVICE = {"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem", "CgroupPermissions": "rwm"}
_ALLOW_ALL = json.dumps({"defaultAction": "SCMP_ACT_ALLOW"})  # a seccomp profile


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PortBindings", _PUBLISHED),
        ("PublishAllPorts", True),
        ("portBindings", _PUBLISHED),
        ("Links", [f"{FOREIGN}:db"]),
        ("ExtraHosts", ["registry.example:203.0.113.9"]),
        ("Dns", ["203.0.113.53"]),
        ("DnsOptions", ["ndots:15"]),
        ("DnsSearch", ["example.org"]),
        ("dns", ["203.0.113.53"]),
        ("PidMode", f"container:{FOREIGN}"),
        ("IpcMode", f"container:{FOREIGN}"),
        ("Cgroup", f"container:{FOREIGN}"),
        ("CgroupParent", "/"),
        ("Sysctls", {"net.ipv4.ip_unprivileged_port_start": "0"}),
        ("Runtime", "runc"),
        ("MaskedPaths", []),
        ("ReadonlyPaths", []),
        ("Mounts", [{"Type": "volume", "Source": VOLUME, "Target": "/data"}]),
        ("Mounts", [_VOLUME_AS_BIND]),
        ("VolumeDriver", "local"),
        ("binds", ["/:/host"]),
        ("volumesFrom", [FOREIGN]),
        ("capAdd", ["SYS_ADMIN"]),
        ("Capabilities", ["CAP_SYS_ADMIN"]),
        ("devices", [_DEVICE]),
        ("deviceCgroupRules", ["c 1:1 rwm"]),
        ("SecurityOpt", ["seccomp=unconfined"]),
        ("SecurityOpt", [f"seccomp={_ALLOW_ALL}"]),
        ("SecurityOpt", ["label=disable"]),
        ("SecurityOpt", ["no-new-privileges", "no-new-privileges=false"]),
        ("securityOpt", ["label=disable"]),
    ],
    ids=[
        "port-bindings",
        "publish-all-ports",
        "port-bindings-in-other-case",
        "links",
        "extra-hosts",
        "dns",
        "dns-options",
        "dns-search",
        "dns-in-other-case",
        "another-containers-pid-namespace",
        "another-containers-ipc-namespace",
        "another-containers-cgroup",
        "cgroup-parent",
        "sysctls",
        "runtime",
        "unmasked-proc-paths",
        "writable-proc-paths",
        "someone-elses-volume",
        "volume-bind-mounting-a-host-path",
        "volume-driver",
        "binds-in-other-case",
        "volumes-from-in-other-case",
        "cap-add-in-other-case",
        "capabilities-of-api-1-40",
        "devices-in-other-case",
        "device-cgroup-rules-in-other-case",
        "seccomp-unconfined",
        "seccomp-profile-allowing-everything",
        "selinux-labels-off",
        "no-new-privileges-undone",
        "second-security-opt-in-other-case",
    ],
)
async def test_a_container_asks_for_nothing_the_docker_backend_does_not(
    api: Any, key: str, value: Any
) -> None:
    """The Docker backend's own body with one more HostConfig key (or SecurityOpt changed).
    A published port opens the replica on the host's addresses; links, extra hosts and DNS
    settings redirect its name resolution; another container's namespace, cgroup or volume
    puts it inside someone else's; a runtime, sysctls, unmasked or writable /proc paths,
    capabilities, devices or security options take protections away. The backend sends
    none of them (SecurityOpt exactly ["no-new-privileges"]), so each is refused, in any
    letter case (the engine's decoder folds case)."""
    body = _then(_CTR, "HostConfig", key, value)
    try:
        for raw in (json.dumps(body), _as_aiodocker_sends(body)):
            assert await api("POST", f"/containers/create?name={NAME}", raw=raw) == 403
        assert await api("GET", f"/containers/{NAME}/json") == 404  # nothing was made
    finally:
        _docker("rm", "-f", NAME)  # what a rule that let it through made
        _docker("volume", "rm", VOLUME)


def _service(backend: SwarmBackend | None = None) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((backend or _swarm_backend()).create_body("c1", 1))
    return body


_SVC_SYSLOG = {"Name": "syslog", "Options": {"syslog-address": "udp://203.0.113.9:514"}}
_NETS = "TaskTemplate.Networks"


@pytest.mark.parametrize(
    "body",
    [
        _changed(_service(), "TaskTemplate.LogDriver", _SVC_SYSLOG),
        _then(_service(), "TaskTemplate", "logdriver", _SVC_SYSLOG),
        _changed(_service(), _NETS, [{"Target": "someone-elses-net", "Aliases": ["c1"]}]),
        _changed(
            _service(), _NETS, [{"Target": SWARM_NET, "Aliases": ["c1"]}, {"Target": "ingress"}]
        ),
        _then(_service(), "TaskTemplate", "networks", [{"Target": "someone-elses-net"}]),
        _then(_service(), "", "Networks", [{"Target": "someone-elses-net"}]),
    ],
    ids=[
        "syslog-driver",
        "second-log-driver-in-other-case",
        "another-network",
        "a-second-network",
        "second-networks-in-other-case",
        "top-level-networks-too",
    ],
)
async def test_a_service_may_log_to_json_file_and_join_the_pools_network_only(
    api: Any, body: dict[str, Any]
) -> None:
    assert await api("POST", "/services/create", raw=json.dumps(body)) == 403
    update = f"/services/{NAME}/update?version=1"
    assert await api("POST", update, raw=json.dumps(body)) == 403


_CS = "TaskTemplate.ContainerSpec"
_HOST_PORT = {"Protocol": "tcp", "TargetPort": 5000, "PublishedPort": 15000}
_FILE = {"Name": "x", "UID": "0", "GID": "0", "Mode": 292}


@pytest.mark.parametrize(
    "body",
    [
        _then(_service(), "EndpointSpec", "Ports", [{**_HOST_PORT, "PublishMode": "host"}]),
        _then(_service(), "EndpointSpec", "Ports", [{**_HOST_PORT, "PublishMode": "ingress"}]),
        _then(_service(), "EndpointSpec", "ports", [_HOST_PORT]),
        _then(_service(), _CS, "Hosts", ["203.0.113.9 registry.example"]),
        _then(_service(), _CS, "DNSConfig", {"Nameservers": ["203.0.113.53"]}),
        _then(_service(), _CS, "dnsConfig", {"Search": ["example.org"]}),
        _then(_service(), _CS, "CapabilityAdd", ["CAP_SYS_ADMIN"]),
        _then(_service(), _CS, "capabilityAdd", ["CAP_SYS_ADMIN"]),
        _then(_service(), _CS, "Sysctls", {"net.ipv4.ip_unprivileged_port_start": "0"}),
        _then(_service(), _CS, "Privileges", {"Seccomp": {"Mode": "unconfined"}}),
        _then(_service(), _CS, "Privileges", {"AppArmor": {"Mode": "disabled"}}),
        _then(_service(), _CS, "Privileges", {"SELinuxContext": {"Disable": True}}),
        _then(_service(), _CS, "Privileges", {"CredentialSpec": {"Config": "someones"}}),
        _then(_service(), _CS, "Mounts", [{"Type": "volume", "Source": VOLUME, "Target": "/d"}]),
        _then(_service(), _CS, "Mounts", [_VOLUME_AS_BIND]),
        _then(_service(), _CS, "Mounts", [{"Type": "tmpfs", "Target": "/d"}]),
        _then(
            _service(), _CS, "Secrets", [{"SecretName": "someones", "SecretID": "x", "File": _FILE}]
        ),
        _then(
            _service(), _CS, "Configs", [{"ConfigName": "someones", "ConfigID": "x", "File": _FILE}]
        ),
        _then(_service(), "TaskTemplate", "Runtime", "plugin"),
        _then(_service(), "TaskTemplate", "PluginSpec", {"Name": "someones", "Remote": "x/y"}),
        _then(
            _then(_service(), "TaskTemplate", "Runtime", "container"),
            "TaskTemplate",
            "runtime",
            "plugin",
        ),
    ],
    ids=[
        "host-published-port",
        "ingress-published-port",
        "ports-in-other-case",
        "extra-hosts",
        "dns-config",
        "dns-config-in-other-case",
        "capability-add",
        "capability-add-in-other-case",
        "sysctls",
        "seccomp-unconfined",
        "apparmor-disabled",
        "selinux-disabled",
        "credential-spec",
        "someone-elses-volume",
        "volume-bind-mounting-a-host-path",
        "tmpfs-mount",
        "someone-elses-secret",
        "someone-elses-config",
        "plugin-runtime",
        "plugin-spec",
        "second-runtime-in-other-case",
    ],
)
async def test_a_service_asks_for_nothing_the_swarm_backend_does_not(
    api: Any, body: dict[str, Any]
) -> None:
    """The Swarm backend's own body with one more key: a published port (host mode or the
    ingress mesh's, on every node), its own hosts or DNS, added capabilities or sysctls,
    seccomp, AppArmor or SELinux relaxed, a mount of any type (a named volume is someone's
    data; the local driver bind-mounts a host path), someone's secrets or configs, or a
    plugin to install in place of a container. Refused at creation and at update."""
    assert await api("POST", "/services/create", raw=json.dumps(body)) == 403
    update = f"/services/{NAME}/update?version=1"
    assert await api("POST", update, raw=json.dumps(body)) == 403


def _as_the_engine_returns(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` as the engine returns it (Docker 20.10, API 1.41, `GET /services/<name>`
    of the Swarm backend's service, 2026-12-08): the members it fills in added."""
    out = copy.deepcopy(spec)
    container = out["TaskTemplate"]["ContainerSpec"]
    container["Privileges"] = {"CredentialSpec": None, "SELinuxContext": None}
    container["Isolation"] = "default"
    out["TaskTemplate"]["Placement"] = {}
    out["TaskTemplate"]["ForceUpdate"] = 1
    out["TaskTemplate"]["Runtime"] = "container"
    out["UpdateConfig"]["MaxFailureRatio"] = 0
    return out


async def test_the_balancers_service_update_passes(api: Any) -> None:
    """An update sends the spec as the engine returns it, where the network is its ID (the
    proxy cannot tell whose network an ID is): update_body names it again (without a swarm
    the engine then answers 503; with one, 404: there is no such service). The members the
    engine fills in (empty Privileges, the "container" runtime, ...) pass."""
    backend = _swarm_backend()
    backend._network_id = "kq0z5m8v3yhq2ghgb4w4e0k3a"
    attached = [{"Target": backend._network_id, "Aliases": ["c1"]}]
    stored = _as_the_engine_returns(_changed(_service(backend), _NETS, attached))
    assert await api("POST", f"/services/{NAME}/update?version=1", raw=json.dumps(stored)) == 403
    body = backend.update_body(stored)
    assert await api("POST", f"/services/{NAME}/update?version=1", raw=body) in (404, 503)


def _network_bodies() -> tuple[dict[str, Any], dict[str, Any]]:
    """The Docker backend's and the Swarm backend's network creation bodies."""
    return _docker_backend().network_body(), _swarm_backend().network_body()


async def test_the_backends_networks_may_be_created(api: Any) -> None:
    docker, swarm = _network_bodies()
    # NET exists (the fixture made it): the engine's 409 says the proxy let the body pass
    assert await api("POST", "/networks/create", raw=_as_aiodocker_sends(docker)) == 409
    # an overlay network outside a swarm: the engine's own refusal (500), past the proxy
    assert await api("POST", "/networks/create", raw=_as_aiodocker_sends(swarm)) in (201, 500)


_DNET, _SNET = _network_bodies()


@pytest.mark.parametrize(
    "body",
    [
        _changed(_DNET, "Name", "someone-elses-net"),
        _changed(_SNET, "Name", NET),  # an overlay network under the bridge's name
        _changed(_DNET, "Driver", "macvlan"),
        _then(_DNET, "", "Options", {"parent": "eth0"}),
        _then(_DNET, "", "Ingress", True),
        _then(_DNET, "", "name", "someone-elses-net"),
        {"Name": f"{POOL_NAME}-other", "Labels": dict(POOL)},
    ],
    ids=[
        "another-name",
        "swarm-driver-on-the-bridge-name",
        "macvlan-driver",
        "driver-options",
        "ingress",
        "second-name-in-other-case",
        "another-name-of-the-pool",
    ],
)
async def test_other_networks_may_not_be_created(api: Any, body: dict[str, Any]) -> None:
    for raw in (json.dumps(body), _as_aiodocker_sends(body)):
        assert await api("POST", "/networks/create", raw=raw) == 403
    names = _docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert "someone-elses-net" not in names and f"{POOL_NAME}-other" not in names


async def test_the_docker_backend_makes_and_removes_its_network_through_the_proxy(
    proxy: str, api: Any
) -> None:
    """Run outside Compose, the backend creates its network (found none) and removes it when
    it closes; the proxy lets it remove that network, by name, and no other."""
    net_id = _docker("network", "inspect", "-f", "{{.Id}}", NET).stdout.strip()
    assert await api("DELETE", f"/networks/{net_id}") == 403  # not by ID
    assert await api("DELETE", "/networks/bridge") == 403
    assert await api("DELETE", f"/networks/{NET}") == 204  # the fixture's: made again below
    backend = _docker_backend(proxy.removesuffix("/v1.41").replace("http://", "tcp://"))
    await backend.connect(lambda event: None)
    try:
        await backend._ensure_network()  # through the proxy, as aiodocker sends it
        assert NET in _docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    finally:
        await backend.close()
        gone = NET not in _docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        _docker("network", "rm", NET)
        made = _docker("network", "create", "--internal", "--label", f"{POOL_NAME}=test", NET)
        assert made.returncode == 0, made.stderr
    assert gone, "the backend left its network behind"


@pytest.mark.parametrize(
    "name", ["someone-else", f"{POOL_NAME}-ring-x", f"{POOL_NAME}_c1", f"{POOL_NAME}-ring-1x"]
)
async def test_a_config_named_outside_the_pools_ring_claims_is_refused(api: Any, name: str) -> None:
    body = _service_body(f'"Name": "{name}"', _LABELS, '"Data": "eA=="')
    assert await api("POST", "/configs/create", raw=body) == 403


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


@pytest.mark.parametrize("pool", [".*", "a_b", "x|y", "", 'a"b'])
def test_the_image_refuses_a_pool_name_that_would_widen_its_patterns(pool: str) -> None:
    """LBPROXY_POOL is pasted into haproxy.cfg's patterns; `lbproxy serve` refuses such a
    --pool (tests/test_pool_name.py), and so does the proxy's entrypoint, before HAProxy."""
    if not _image_present():
        pytest.skip(f"{IMAGE} not built (scripts/ensure-images.sh)")
    run = _docker("run", "--rm", "--network", "none", "-e", f"LBPROXY_POOL={pool}", IMAGE)
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert "cannot name a pool" in run.stderr


@pytest.mark.parametrize("variable", ["LBPROXY_NETWORK", "LBPROXY_SWARM_NETWORK"])
@pytest.mark.parametrize("network", ["a.b", ".*", "", 'a"b', "-lead", "x" * 65])
def test_the_image_refuses_a_network_name_that_would_widen_its_patterns(
    variable: str, network: str
) -> None:
    if not _image_present():
        pytest.skip(f"{IMAGE} not built (scripts/ensure-images.sh)")
    run = _docker("run", "--rm", "--network", "none", "-e", f"{variable}={network}", IMAGE)
    assert run.returncode == 1, (run.stdout, run.stderr)
    assert f"{variable}=" in run.stderr and "cannot name a network" in run.stderr


@pytest.fixture
def legacy() -> Iterator[str]:
    """A stopped replica container of the pool under its bare hostname; its ID."""
    _docker("rm", "-f", LEGACY)
    made = _docker(
        "create", "--name", LEGACY, "--network", "none",
        "--label", f"lbproxy.control.pool={POOL_NAME}", "--label", "lbproxy.role=replica",
        "--label", f"lbproxy.replica={LEGACY}", "--label", "lbproxy.ring-id=1",
        "lbproxy-server:latest",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    try:
        yield made.stdout.strip()
    finally:
        _docker("rm", "-f", LEGACY)


async def test_a_bare_named_replica_is_left_to_the_operator_with_the_command(
    proxy: str, legacy: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the proxy the balancer can change only '<pool>_' names, so a container an
    older lbproxy named after the bare hostname cannot be removed by it (allowing it would
    mean allowing names outside the prefix: anyone's). It says so, with the command."""
    url = proxy.removesuffix("/v1.41").replace("http://", "tcp://")
    backend = _docker_backend(url)
    await backend.connect(lambda event: None)
    try:
        assert await backend.adopt() == []  # a stopped one is removed if it can be
        assert f"docker rm -f {LEGACY}" in caplog.text
        with pytest.raises(BackendError, match=f"docker rm -f {LEGACY}"):
            await backend.stop(ReplicaHandle(LEGACY, "", legacy, 1), timeout=0)
    finally:
        await backend.close()
    assert _docker("inspect", LEGACY).returncode == 0  # untouched: the operator's to remove


def test_docker_stop_stops_the_proxy_by_itself() -> None:
    """`docker stop` (and `docker compose down`) sends SIGTERM to PID 1. A process that is
    PID 1 of its namespace gets no signal it has not installed a handler for, and HAProxy
    outside master-worker mode leaves SIGTERM to the default action: the proxy sat out the
    grace period and was SIGKILLed (exit 137). It must exit by itself (0, or 143)."""
    if not _image_present():
        pytest.skip(f"{IMAGE} not built (scripts/ensure-images.sh)")
    port = free_loopback_port()
    env = [arg for k, v in PROXY_ENV.items() for arg in ("-e", f"{k}={v}")]
    run = _docker(
        "run", "-d", "-p", f"127.0.0.1:{port}:2375",
        "-v", "/var/run/docker.sock:/var/run/docker.sock", *env, IMAGE,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    container = run.stdout.strip()
    try:

        def alive() -> bool:
            state = _docker("inspect", "-f", "{{.State.Running}}", container).stdout
            return state.strip() == "true"

        _wait_listening(port, alive)  # HAProxy runs (not the entrypoint's shell still)
        stop = _docker("stop", "-t", "10", container)  # returns once the container is down
        assert stop.returncode == 0, stop.stderr
        code = _docker("inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip()
        assert code in ("0", "143"), f"exit code {code}: SIGKILLed after ignoring SIGTERM"
    finally:
        _docker("rm", "-f", container)
