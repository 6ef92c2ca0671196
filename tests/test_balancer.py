"""The balancer's HTTP contract (SPEC Task 3) over real sockets, replicas in-process."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from lbproxy.control.pool import ReplicaState
from tests.conftest import BalancerUnderTest, wait_for

pytestmark = pytest.mark.inprocess


def rep(names: list[str]) -> dict[str, Any]:
    return {"message": {"N": len(names), "replicas": names}, "status": "successful"}


async def test_rep_lists_initial_replicas(lb: BalancerUnderTest) -> None:
    status, body = await lb.get_json("/rep")
    assert status == 200
    assert body == rep(["Server 1", "Server 2", "Server 3"])


async def test_home_is_routed_to_a_replica(lb: BalancerUnderTest) -> None:
    async with lb.client.get(lb.url + "/home") as resp:
        assert resp.status == 200
        body = await resp.json()
        request_id = resp.headers["X-Request-ID"]
    assert request_id.isdigit() and len(request_id) == 6
    assert body["status"] == "successful"
    assert body["message"] in {f"Hello from Server: Server {i}" for i in (1, 2, 3)}


async def test_same_request_id_reaches_same_replica(lb: BalancerUnderTest) -> None:
    for request_id in ("123456", "987654", "0b8a6f3c-6b1e-4c1f-9d5e-3c0a9e1b2f44"):
        seen = set()
        for _ in range(5):
            async with lb.client.get(
                lb.url + "/home", headers={"X-Request-ID": request_id}
            ) as resp:
                assert resp.headers["X-Request-ID"] == request_id
                seen.add((await resp.json())["message"])
        assert len(seen) == 1
        owner = lb.balancer.pool.owner(request_id).name
        assert seen == {f"Hello from Server: {owner}"}


async def test_requests_spread_over_all_replicas(lb: BalancerUnderTest) -> None:
    served = set()
    for i in range(200):
        async with lb.client.get(
            lb.url + "/home", headers={"X-Request-ID": str(100000 + i * 4099)}
        ) as r:
            served.add((await r.json())["message"])
    assert len(served) == 3


async def test_unknown_path_gives_spec_error(lb: BalancerUnderTest) -> None:
    status, body = await lb.get_json("/other")
    assert status == 400
    assert body == {
        "message": "<Error> '/other' endpoint does not exist in server replicas",
        "status": "failure",
    }


async def test_heartbeat_is_proxied_with_empty_body(lb: BalancerUnderTest) -> None:
    async with lb.client.get(lb.url + "/heartbeat") as resp:
        assert resp.status == 200
        assert await resp.read() == b""


async def test_add_with_names_and_generated_names(lb: BalancerUnderTest) -> None:
    async with lb.client.post(lb.url + "/add", json={"n": 4, "hostnames": ["S5", "S4"]}) as r:
        assert r.status == 200
        body = await r.json()
    assert body == rep(["Server 1", "Server 2", "Server 3", "S5", "S4", "Server 4", "Server 5"])
    # /add answers only once the new replicas passed a heartbeat and are on the ring.
    assert lb.balancer.pool.ring.names == frozenset(body["message"]["replicas"])
    _status, again = await lb.get_json("/rep")
    assert again == body


async def test_add_rejects_more_hostnames_than_n(lb: BalancerUnderTest) -> None:
    async with lb.client.post(lb.url + "/add", json={"n": 1, "hostnames": ["S5", "S4"]}) as r:
        assert r.status == 400
        assert await r.json() == {
            "message": "<Error> Length of hostname list is more than newly added instances",
            "status": "failure",
        }


async def test_rm_named_first_then_others(lb: BalancerUnderTest) -> None:
    await lb.client.post(lb.url + "/add", json={"n": 2, "hostnames": ["S5", "S4"]})
    async with lb.client.delete(lb.url + "/rm", json={"n": 3, "hostnames": ["S5", "S4"]}) as r:
        assert r.status == 200
        body = await r.json()
    assert body["status"] == "successful"
    names = body["message"]["replicas"]
    assert body["message"]["N"] == 2 and "S5" not in names and "S4" not in names
    assert set(names) < {"Server 1", "Server 2", "Server 3"}
    assert len(lb.backend.running) == 2


async def test_rm_rejects_more_hostnames_than_n(lb: BalancerUnderTest) -> None:
    async with lb.client.delete(
        lb.url + "/rm", json={"n": 1, "hostnames": ["Server 1", "Server 2"]}
    ) as r:
        assert r.status == 400
        assert await r.json() == {
            "message": "<Error> Length of hostname list is more than removable instances",
            "status": "failure",
        }


BAD_ADD: list[tuple[str, bytes, int]] = [
    ("not json", b"{n: 2", 400),
    ("json array", b"[1, 2]", 400),
    ("json string", b'"n"', 400),
    ("empty body", b"", 400),
    ("missing n", b'{"hostnames": []}', 400),
    ("n string", b'{"n": "2"}', 400),
    ("n float", b'{"n": 2.5}', 400),
    ("n bool", b'{"n": true}', 400),
    ("n null", b'{"n": null}', 400),
    ("n negative", b'{"n": -1}', 400),
    ("n absurd", b'{"n": 100000}', 400),
    ("hostnames not list", b'{"n": 1, "hostnames": "S5"}', 400),
    ("hostnames not strings", b'{"n": 2, "hostnames": [5, 6]}', 400),
    ("hostname invalid", b'{"n": 1, "hostnames": ["bad/name"]}', 400),
    ("hostname empty", b'{"n": 1, "hostnames": [""]}', 400),
    ("hostname too long", json.dumps({"n": 1, "hostnames": ["x" * 200]}).encode(), 400),
    ("hostname duplicated", b'{"n": 2, "hostnames": ["S9", "S9"]}', 400),
    ("hostname taken", b'{"n": 1, "hostnames": ["Server 1"]}', 409),
    ("unknown field", b'{"n": 1, "hostname": ["S9"]}', 400),
    ("huge body", b'{"n": 1, "hostnames": ["' + b"a" * 100_000 + b'"]}', 413),
]

BAD_RM: list[tuple[str, bytes, int]] = [
    ("not json", b"nope", 400),
    ("n string", b'{"n": "1"}', 400),
    ("n negative", b'{"n": -3}', 400),
    ("unknown name", b'{"n": 1, "hostnames": ["S99"]}', 404),
    ("more than exist", b'{"n": 4}', 400),
    ("hostnames not strings", b'{"n": 1, "hostnames": [null]}', 400),
    ("duplicate names", b'{"n": 2, "hostnames": ["Server 1", "Server 1"]}', 400),
]


async def _assert_unchanged(lb: BalancerUnderTest) -> None:
    _status, body = await lb.get_json("/rep")
    assert body == rep(["Server 1", "Server 2", "Server 3"])
    assert len(lb.backend.running) == 3
    assert lb.balancer.pool.ring.names == frozenset(["Server 1", "Server 2", "Server 3"])


@pytest.mark.parametrize(("case", "payload", "status"), BAD_ADD, ids=[c[0] for c in BAD_ADD])
async def test_add_bad_input(lb: BalancerUnderTest, case: str, payload: bytes, status: int) -> None:
    async with lb.client.post(
        lb.url + "/add", data=payload, headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == status, case
        body = await r.json()
    assert body["status"] == "failure"
    assert body["message"].startswith("<Error> ")
    await _assert_unchanged(lb)


@pytest.mark.parametrize(("case", "payload", "status"), BAD_RM, ids=[c[0] for c in BAD_RM])
async def test_rm_bad_input(lb: BalancerUnderTest, case: str, payload: bytes, status: int) -> None:
    async with lb.client.delete(lb.url + "/rm", data=payload) as r:
        assert r.status == status, case
        body = await r.json()
    assert body["status"] == "failure"
    assert body["message"].startswith("<Error> ")
    await _assert_unchanged(lb)


async def test_failed_add_rolls_back(lb: BalancerUnderTest) -> None:
    lb.backend.fail_names.add("S7")
    async with lb.client.post(lb.url + "/add", json={"n": 3, "hostnames": ["S6", "S7"]}) as r:
        assert r.status == 502
        body = await r.json()
    assert body["status"] == "failure" and "S7" in body["message"]
    await _assert_unchanged(lb)


@pytest.mark.lbconfig(hash="seed")
async def test_full_seed_ring_rejects_add_cleanly(lb: BalancerUnderTest) -> None:
    for _ in range(2):  # at most 56 replicas fit; 3 + 64 cannot
        async with lb.client.post(lb.url + "/add", json={"n": 64}) as r:
            if r.status != 200:
                assert r.status == 409
                body = await r.json()
                assert body["status"] == "failure" and "ring" in body["message"]
                break
    else:
        pytest.fail("the seed ring accepted more replicas than it can place")
    _status, body = await lb.get_json("/rep")
    assert body["message"]["N"] == len(lb.backend.running)


async def test_crashed_replica_is_replaced_under_same_name(lb: BalancerUnderTest) -> None:
    pool = lb.balancer.pool
    victim = pool.get("Server 2")
    assert victim is not None
    old_url = victim.url
    await lb.backend.crash("Server 2")
    assert "Server 2" not in pool.ring.names  # off the ring at once
    await wait_for(lambda: victim.state is ReplicaState.UP and victim.url != old_url)
    _status, body = await lb.get_json("/rep")
    assert body == rep(["Server 1", "Server 2", "Server 3"])
    assert victim.ring_id == 2  # the replacement keeps its slots


async def test_hung_replica_is_replaced_by_heartbeat(lb: BalancerUnderTest) -> None:
    victim = lb.balancer.pool.get("Server 1")
    assert victim is not None
    old_id = victim.handle.backend_id if victim.handle else None
    lb.backend.hang("Server 1")
    await wait_for(
        lambda: (
            victim.handle is not None
            and victim.handle.backend_id != old_id
            and victim.state is ReplicaState.UP
        )
    )
    kinds = [e.kind for e in lb.balancer.pool.events.since(0) if e.replica == "Server 1"]
    assert "heartbeat_down" in kinds and "replacing" in kinds


async def test_removed_replica_is_not_replaced(lb: BalancerUnderTest) -> None:
    async with lb.client.delete(lb.url + "/rm", json={"n": 1, "hostnames": ["Server 3"]}) as r:
        assert r.status == 200
    # Three whole heartbeat rounds after the removal: time enough for any replacement.
    rounds = lb.balancer.monitor.rounds
    await wait_for(lambda: lb.balancer.monitor.rounds >= rounds + 3)
    assert "Server 3" not in lb.backend.launched[3:]
    _status, body = await lb.get_json("/rep")
    assert body == rep(["Server 1", "Server 2"])


async def test_no_client_error_when_replica_dies(lb: BalancerUnderTest) -> None:
    """Connection failures are retried on the next replica: clients see only 200s."""
    ids = [str(100000 + i * 7919) for i in range(300)]
    statuses: list[int] = []

    async def one(request_id: str) -> None:
        async with lb.client.get(lb.url + "/home", headers={"X-Request-ID": request_id}) as r:
            await r.read()
            statuses.append(r.status)

    async def load() -> None:
        for chunk in range(0, len(ids), 20):
            await asyncio.gather(*(one(i) for i in ids[chunk : chunk + 20]))

    task = asyncio.create_task(load())
    await wait_for(lambda: len(statuses) > 0)  # the load is flowing
    # Kill without telling the balancer: only failed connects and heartbeats reveal it.
    entry = lb.backend.live("Server 1")
    lb.backend.running.pop(entry.handle.backend_id)
    await entry.runner.cleanup()
    await task
    assert statuses.count(200) == len(ids), sorted(set(statuses))


async def test_status_and_events_views(lb: BalancerUnderTest) -> None:
    status, body = await lb.get_json("/lbproxy/status")
    assert status == 200
    assert isinstance(body, dict)
    message = body["message"]
    assert [r["name"] for r in message["replicas"]] == ["Server 1", "Server 2", "Server 3"]
    assert abs(sum(message["shares"].values()) - 1.0) < 1e-9
    status, events = await lb.get_json("/lbproxy/events?since=0")
    assert status == 200 and isinstance(events, dict)
    assert {e["kind"] for e in events["message"]} >= {"added", "launched", "up"}
    status, _bad = await lb.get_json("/lbproxy/events?since=x")
    assert status == 400
