"""Operator features: metrics, admin token, a separate admin port, bounded load, drain."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import pytest

from lbproxy.backends.base import ReplicaHandle
from lbproxy.backends.engine import engine_error
from lbproxy.config import ProxyConfig
from lbproxy.errors import RETRY_AFTER
from lbproxy.server import BalancerServer
from lbproxy_tools.launcher import free_loopback_port
from tests.conftest import BalancerUnderTest, InProcessBackend, fast_config, wait_for

pytestmark = pytest.mark.inprocess


async def test_metrics_expose_pool_and_traffic(lb: BalancerUnderTest) -> None:
    for i in range(30):
        async with lb.client.get(lb.url + "/home", headers={"X-Request-ID": str(200000 + i)}) as r:
            await r.read()
    async with lb.client.get(lb.url + "/nope") as r:
        await r.read()
    async with lb.client.get(lb.url + "/lbproxy/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    served = sum(v for k, v in samples.items() if k.startswith("lbproxy_replica_responses_total{"))
    assert served == 31  # 30 x 200 and the replica's 404 behind SPEC's 400
    assert samples['lbproxy_replicas{state="up"}'] == 3
    assert samples["lbproxy_ring_size"] == 3
    assert samples["lbproxy_pool_target"] == 3
    assert samples["lbproxy_request_duration_seconds_count"] >= 31
    assert "lbproxy_replacements_total" in samples
    assert "process_resident_memory_bytes" in samples


@pytest.mark.lbconfig(admin_token="s3cret")
async def test_admin_token_guards_mutations(lb: BalancerUnderTest) -> None:
    body = {"n": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        async with lb.client.post(lb.url + "/add", json=body, headers=headers) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            err = await r.json()
        assert err["status"] == "failure" and "Authorization" in err["message"]
    async with lb.client.delete(lb.url + "/rm", json=body) as r:
        assert r.status == 401
    assert len(lb.balancer.pool) == 3  # nothing changed
    status, _ = await lb.get_json("/rep")  # reading stays open
    assert status == 200
    ok = {"Authorization": "Bearer s3cret"}
    async with lb.client.post(lb.url + "/add", json=body, headers=ok) as r:
        assert r.status == 200
        assert (await r.json())["message"]["N"] == 4


async def test_admin_503_says_when_to_retry(
    lb: BalancerUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backend unreachable (the Docker engine refusing connections, engine.py's error):
    a 503 with ``Retry-After`` (RFC 9110 15.6.4, 10.2.3) in whole seconds; nothing changed."""

    async def unreachable(name: str, ring_id: int) -> ReplicaHandle:
        raise engine_error("starting replica", ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(lb.backend, "launch", unreachable)
    async with lb.client.post(lb.url + "/add", json={"n": 1}) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == str(RETRY_AFTER) == "1"
        err = await r.json()
    assert err["status"] == "failure" and "unreachable" in err["message"]
    assert len(lb.balancer.pool) == 3


async def test_admin_503_while_shutting_down_has_no_retry_after(lb: BalancerUnderTest) -> None:
    """A balancer that is shutting down does not come back: ``Retry-After`` would promise
    that this address serves the change later (RFC 9110 10.2.3), which nothing here knows."""
    lb.balancer.reconciler.begin_shutdown()
    async with lb.client.post(lb.url + "/add", json={"n": 1}) as r:
        assert r.status == 503
        assert "Retry-After" not in r.headers
        err = await r.json()
    assert err == {"message": "<Error> the balancer is shutting down", "status": "failure"}


async def test_separate_admin_port_unshadows_every_path() -> None:
    admin_port = free_loopback_port()
    backend = InProcessBackend()
    server = BalancerServer(fast_config(admin_port=admin_port), backend)
    await server.start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{admin_port}/rep") as r:
                assert r.status == 200 and (await r.json())["message"]["N"] == 3
            # on the public port /rep is just another replica path (a 404 there: SPEC's 400)
            async with s.get(server.url + "/rep") as r:
                assert r.status == 400
                assert "endpoint does not exist in server replicas" in (await r.json())["message"]
            async with s.get(server.url + "/home") as r:
                assert r.status == 200
    finally:
        await server.stop()


async def _hot_key_spread(lb: BalancerUnderTest, requests: int) -> Counter[str]:
    """Where ``requests`` of one hot key went: each replica's in-flight count while all of
    them are held at the replicas (``/_t/hold``), read once the pool counts them all."""

    async def one() -> None:
        async with lb.client.get(lb.url + "/_t/hold", headers={"X-Request-ID": "555555"}) as r:
            assert r.status == 200

    tasks = [asyncio.create_task(one()) for _ in range(requests)]
    replicas = lb.balancer.pool.replicas
    await wait_for(lambda: sum(r.in_flight for r in replicas()) == requests)
    spread = Counter({r.name: r.in_flight for r in replicas()})
    lb.backend.release.set()
    await asyncio.gather(*tasks)
    return spread


async def test_hot_key_without_bound_lands_on_one_replica(lb: BalancerUnderTest) -> None:
    spread = await _hot_key_spread(lb, 30)
    assert max(spread.values()) == 30


@pytest.mark.lbconfig(proxy=ProxyConfig(bounded_load=1.25))
async def test_bounded_load_caps_a_hot_key(lb: BalancerUnderTest) -> None:
    spread = await _hot_key_spread(lb, 30)
    assert sum(spread.values()) == 30
    # capacity ceil(1.25 * load / 3) with load <= 30: at most 13 per replica
    assert max(spread.values()) <= 13, spread
    assert len([v for v in spread.values() if v]) >= 3


async def test_rm_under_load_fails_no_request(lb: BalancerUnderTest) -> None:
    """/rm drains: the leaving replica gets no new request and finishes its in-flight ones."""
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    async def worker(w: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            headers = {"X-Request-ID": str(100000 + w * 10007 + i * 13)}
            async with lb.client.get(lb.url + "/_t/slow?s=0.05", headers=headers) as r:
                await r.read()
                statuses[r.status] += 1

    workers = [asyncio.create_task(worker(w)) for w in range(16)]
    await wait_for(lambda: statuses.total() >= 32)  # every worker is going
    async with lb.client.delete(lb.url + "/rm", json={"n": 1, "hostnames": ["Server 2"]}) as r:
        assert r.status == 200
    async with lb.client.post(lb.url + "/add", json={"n": 1, "hostnames": ["S9"]}) as r:
        assert r.status == 200
    answered = statuses.total()
    await wait_for(lambda: statuses.total() >= answered + 32)  # and goes on afterwards
    stop.set()
    await asyncio.gather(*workers)
    assert set(statuses) == {200}, statuses
    assert statuses[200] > 50
