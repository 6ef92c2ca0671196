"""Weights through the admin API (issue 11): an optional ``weight`` at /add, and
``PUT /lbproxy/weight`` to change one at run time. SPEC's bodies are unchanged without it;
the seed families refuse weights with a 400 in SPEC's failure shape."""

from __future__ import annotations

import pytest

from tests.conftest import BalancerUnderTest

pytestmark = pytest.mark.inprocess


async def _status(lb: BalancerUnderTest) -> dict[str, object]:
    status, body = await lb.get_json("/lbproxy/status")
    assert status == 200 and isinstance(body, dict)
    message = body["message"]
    assert isinstance(message, dict)
    return message


def _weights(status: dict[str, object]) -> dict[str, int]:
    replicas = status["replicas"]
    assert isinstance(replicas, list)
    return {r["name"]: r["weight"] for r in replicas}


async def test_add_with_a_weight_and_change_it(lb: BalancerUnderTest) -> None:
    async with lb.client.post(
        lb.url + "/add", json={"n": 1, "hostnames": ["big"], "weight": 3}
    ) as r:
        assert r.status == 200
        body = await r.json()
    # SPEC's /add body, unchanged by the extra field
    assert set(body) == {"message", "status"} and set(body["message"]) == {"N", "replicas"}
    assert body["message"]["N"] == 4 and "big" in body["message"]["replicas"]
    status = await _status(lb)
    assert _weights(status)["big"] == 3 and _weights(status)["Server 1"] == 1
    shares = status["shares"]
    assert isinstance(shares, dict)
    assert shares["big"] > 2 * shares["Server 1"]  # 3:1:1:1 -> one half against one sixth
    before = lb.balancer.pool.ring
    async with lb.client.put(
        lb.url + "/lbproxy/weight", json={"hostname": "big", "weight": 1}
    ) as r:
        assert r.status == 200
        assert await r.json() == {
            "message": {"hostname": "big", "weight": 1},
            "status": "successful",
        }
    after = lb.balancer.pool.ring
    assert after is not before and _weights(await _status(lb))["big"] == 1
    for key in (str(k) for k in range(100_000, 104_000)):  # keys moved only from "big"
        a, b = before.lookup(key), after.lookup(key)
        assert a == b or a == "big"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"hostname": "Server 1", "weight": 0}, "from 1 to 100"),
        ({"hostname": "Server 1", "weight": 101}, "from 1 to 100"),
        ({"hostname": "Server 1", "weight": "2"}, "must be an integer"),
        ({"hostname": "Server 1", "weight": True}, "must be an integer"),
        ({"hostname": "nobody", "weight": 2}, "not in the pool"),
        ({"hostname": "Server 1"}, "body must be"),
        ([1, 2], "body must be"),
    ],
)
async def test_bad_weight_changes_are_refused(
    lb: BalancerUnderTest, body: object, fragment: str
) -> None:
    async with lb.client.put(lb.url + "/lbproxy/weight", json=body) as r:
        assert r.status in (400, 404)
        answer = await r.json()
    assert answer["status"] == "failure" and fragment in answer["message"]


async def test_bad_weight_at_add_is_refused_and_nothing_starts(lb: BalancerUnderTest) -> None:
    async with lb.client.post(lb.url + "/add", json={"n": 1, "weight": -1}) as r:
        assert r.status == 400
        assert "from 1 to 100" in (await r.json())["message"]
    assert len(lb.balancer.pool) == 3


@pytest.mark.lbconfig(hash="seed")
async def test_seed_family_refuses_weights(lb: BalancerUnderTest) -> None:
    async with lb.client.post(lb.url + "/add", json={"n": 1, "weight": 2}) as r:
        assert r.status == 400
        assert "does not take weights" in (await r.json())["message"]
    async with lb.client.put(
        lb.url + "/lbproxy/weight", json={"hostname": "Server 1", "weight": 2}
    ) as r:
        assert r.status == 400
    async with lb.client.post(lb.url + "/add", json={"n": 1, "weight": 1}) as r:
        assert r.status == 200  # weight 1 is every family's default
