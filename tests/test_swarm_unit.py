"""The Swarm backend's pure parts: names, the service spec, engine timestamps, events.

The engine-facing behaviour (create, list, force update, several balancers) is tested on a
real swarm in test_swarm_e2e.py; these pin what the balancer asks the engine for.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re

import pytest

from lbproxy.backends.base import BackendEvent
from lbproxy.backends.swarm import LABEL_STACK, SwarmBackend, _parse_time
from lbproxy.cli import build_parser, config_from_args
from lbproxy.config import Config, DockerConfig, SwarmConfig
from lbproxy.errors import BadRequest

pytestmark = pytest.mark.unit


def _backend(**swarm: object) -> SwarmBackend:
    config = Config(
        backend="swarm",
        docker=DockerConfig(pool="pool1", memory_mb=64, cpus=0.25),
        swarm=SwarmConfig(**swarm),  # type: ignore[arg-type]
    )
    return SwarmBackend(config)


def test_names_must_make_valid_service_names() -> None:
    backend = _backend()
    assert backend.validate_name("S5") == "S5"
    assert backend.service_name("S5") == "pool1_S5"
    for bad in ("a.b", "Server 1", "-x", "x" * 60, 5):
        with pytest.raises(BadRequest):
            backend.validate_name(bad)


def test_service_spec_carries_labels_limits_and_placement() -> None:
    backend = _backend(network="net1", constraints=("node.role==worker",), stack="st")
    spec = backend._service_spec("S5", 7)
    assert spec["Name"] == "pool1_S5"
    labels = spec["Labels"]
    assert labels["lbproxy.replica"] == "S5" and labels["lbproxy.ring-id"] == "7"
    assert labels[LABEL_STACK] == "st"
    template = spec["TaskTemplate"]
    container = template["ContainerSpec"]
    assert container["Hostname"] == "S5" and "SERVER_ID=S5" in container["Env"]
    # task containers are recognisable in die events; the weight is the service's alone,
    # so that changing it restarts no task
    assert container["Labels"] == {k: v for k, v in labels.items() if k != "lbproxy.weight"}
    assert labels["lbproxy.weight"] == "1"
    assert backend._service_spec("S6", 8, weight=4)["Labels"]["lbproxy.weight"] == "4"
    assert template["Resources"]["Limits"]["MemoryBytes"] == 64 * 1024 * 1024
    assert template["Resources"]["Limits"]["NanoCPUs"] == 250_000_000
    assert template["Placement"]["Constraints"] == ["node.role==worker"]
    assert template["Networks"] == [{"Target": "net1", "Aliases": ["S5"]}]
    assert template["RestartPolicy"]["Condition"] == "any"
    assert spec["Mode"] == {"Replicated": {"Replicas": 1}}
    assert spec["EndpointSpec"] == {"Mode": "dnsrr"}


def test_no_stack_label_without_a_stack() -> None:
    assert LABEL_STACK not in _backend()._service_spec("S1", 1)["Labels"]


def test_creation_bodies_name_the_object_first_and_once() -> None:
    """What the socket proxy checks (haproxy.cfg, tests/test_socket_proxy.py): the body
    starts with the pool's Name, and no other "name" key (any case) follows but the log
    driver's, so no nested or duplicate key can be what the engine takes as the name."""
    backend = _backend()
    service = backend.create_body("S5", 7, weight=2)
    assert service.startswith('{"Name": "pool1_S5", ')
    others = [m.start() for m in re.finditer(r'(?i)"name"\s*:', service)][1:]
    assert [service[i - len('"LogDriver": {') : i] for i in others] == ['"LogDriver": {']
    assert json.loads(service)["Labels"]["lbproxy.weight"] == "2"
    claim = backend.claim_body(7, "S5")
    assert claim.startswith('{"Name": "pool1-ring-7", ')
    assert len(re.findall(r'(?i)"name"\s*:', claim)) == 1
    assert base64.b64decode(json.loads(claim)["Data"]) == b"S5"


def test_an_update_names_the_replicas_network_again() -> None:
    """The engine returns a service's networks by ID; the socket proxy lets a service join
    the replicas' network by name only (haproxy.cfg), so an update names it again, and
    changes nothing else (another network is left as it is: the proxy refuses it)."""
    backend = _backend(network="net1")
    backend._network_id = "kq0z5m8v3yhq2ghgb4w4e0k3a"
    stored = json.loads(backend.create_body("S5", 7))
    stored["TaskTemplate"]["Networks"] = [
        {"Target": "kq0z5m8v3yhq2ghgb4w4e0k3a", "Aliases": ["S5"]},
        {"Target": "someone-elses-id"},
    ]
    sent = json.loads(backend.update_body(stored))
    assert sent["TaskTemplate"]["Networks"] == [
        {"Target": "net1", "Aliases": ["S5"]},
        {"Target": "someone-elses-id"},
    ]
    sent["TaskTemplate"]["Networks"] = stored["TaskTemplate"]["Networks"]
    assert sent == stored


def test_engine_timestamps_keep_their_order_whatever_the_digits() -> None:
    # Go trims trailing zeros from nanoseconds: string order is not time order.
    early = _parse_time("2026-12-02T03:46:38.9Z")
    late = _parse_time("2026-12-02T03:46:38.372140187Z")
    assert late < early
    assert _parse_time("2026-12-02T03:46:39Z") > early
    assert _parse_time("garbage") == 0.0


def test_task_address_on_the_pool_network() -> None:
    backend = _backend(network="net1")
    task = {
        "NetworksAttachments": [
            {"Network": {"Spec": {"Name": "ingress"}}, "Addresses": ["10.0.0.5/24"]},
            {"Network": {"Spec": {"Name": "net1"}}, "Addresses": ["10.0.1.3/24"]},
        ]
    }
    assert backend._task_url(task) == "http://10.0.1.3:5000"
    assert backend._task_url({"NetworksAttachments": []}) is None


async def test_events_of_the_pool_wake_the_sync_and_report_deaths() -> None:
    backend = _backend()
    deaths: list[BackendEvent] = []
    backend._on_death = deaths.append
    backend.on_event({"Type": "service", "Actor": {"Attributes": {"name": "other_S1"}}})
    backend.on_event(
        {"Type": "container", "Actor": {"Attributes": {"lbproxy.control.pool": "other"}}}
    )
    assert not backend.changed.is_set() and not deaths
    backend.on_event({"Type": "service", "Actor": {"Attributes": {"name": "pool1_S1"}}})
    assert backend.changed.is_set()
    backend.changed.clear()
    backend.on_event(
        {
            "Type": "container",
            "Action": "die",
            "Actor": {
                "ID": "c1",
                "Attributes": {
                    "lbproxy.control.pool": "pool1",
                    "lbproxy.replica": "S1",
                    "com.docker.swarm.task.id": "t1",
                    "exitCode": "137",
                },
            },
        }
    )
    assert backend.changed.is_set()
    assert deaths == [BackendEvent("S1", "t1", "task container died (exit code 137)")]
    await asyncio.sleep(0)


def test_a_task_containers_start_is_not_a_death() -> None:
    """The stream carries ``start`` too (it wakes the sync): only ``die`` reports a death.

    Reported as a death, the new task's start event marked its own incarnation dead when the
    list had already put it in the pool (the event came after the list): its heartbeat
    probe then gave up at once and the replica stayed down.
    """
    backend = _backend()
    deaths: list[BackendEvent] = []
    backend._on_death = deaths.append
    attributes = {
        "lbproxy.control.pool": "pool1",
        "lbproxy.replica": "S1",
        "com.docker.swarm.task.id": "t2",
    }
    backend.on_event(
        {"Type": "container", "Action": "start", "Actor": {"ID": "c2", "Attributes": attributes}}
    )
    assert backend.changed.is_set()
    assert deaths == []


def test_swarm_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LBPROXY_SWARM_CONSTRAINTS", "node.role==worker, node.labels.zone==a")
    args = build_parser().parse_args(
        ["serve", "--backend", "swarm", "--swarm-network", "n2", "--swarm-stack", "st"]
    )
    swarm = config_from_args(args).swarm
    assert swarm == SwarmConfig(
        network="n2",
        constraints=("node.role==worker", "node.labels.zone==a"),
        sync_interval=1.0,
        stack="st",
    )
