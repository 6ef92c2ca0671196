"""Queued requests follow the ring when the pool changes (issue 14 + issue 12's A-5).

A request waiting in a replica's FIFO queue (``--max-conns-per-replica``) is bound to that
replica's address. HAProxy moves queued requests when their server goes down (``option
redispatch`` / the queue redistribution in ``pendconn_redistribute``) and lets a server
that comes up take requests from the backend's queue. Here: when the ring changes, every
queued request whose key the ring now gives to another replica leaves its queue for that
replica's (in its original arrival order), instead of waiting for a connection that may
never come back, or for a queue timeout, while the new owner sits idle.

Each test saturates one replica (one connection, held by ``/_t/hold``), queues requests
behind it and changes the pool: a join, a hang (the heartbeat takes the replica off the
ring) or a removal. The queued requests must be answered 200 while the held request still
holds the old replica's only connection. Nothing sleeps and samples: every wait is on a
counter or on a request finishing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import aiohttp
import pytest

from lbproxy.config import ProxyConfig
from lbproxy.control.pool import Pool
from tests.conftest import BalancerUnderTest, wait_for

pytestmark = pytest.mark.inprocess

#: A long queue timeout: without redispatch the queued requests wait for the held one,
#: so the tests' 5 s waits fail (a 503 is never what tells them apart).
CAPPED = ProxyConfig(max_conns_per_replica=1, queue_timeout=30.0)


@pytest.fixture(autouse=True)
async def _no_leftovers(lb: BalancerUnderTest) -> AsyncIterator[None]:
    """A failing test leaves requests held: release and reap them before the balancer
    stops (no "Task exception was never retrieved" noise after the real failure)."""
    yield
    lb.backend.release.set()
    pending = [t for t in TASKS if not t.done()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*TASKS, return_exceptions=True)
    TASKS.clear()


TASKS: list[asyncio.Task[tuple[int, str]]] = []


def spawn(coro: Coroutine[Any, Any, tuple[int, str]]) -> asyncio.Task[tuple[int, str]]:
    task = asyncio.create_task(coro)
    TASKS.append(task)
    return task


def keys_owned_by(pool: Pool, name: str, count: int) -> list[str]:
    out = []
    for i in range(20000):
        key = str(100000 + i)
        if pool.owner(key).name == name:
            out.append(key)
            if len(out) == count:
                return out
    raise AssertionError(f"fewer than {count} keys for {name!r}")


async def get(client: aiohttp.ClientSession, url: str, key: str) -> tuple[int, str]:
    async with client.get(url, headers={"X-Request-ID": key}) as r:
        return r.status, await r.text()


async def saturate(
    lb: BalancerUnderTest, name: str, keys: list[str]
) -> tuple[asyncio.Task[tuple[int, str]], list[asyncio.Task[tuple[int, str]]]]:
    """``/_t/hold`` on ``name``'s one connection, then ``keys`` queued behind it."""
    front = lb.balancer.stats.upstreams
    assert front is not None
    replica = lb.balancer.pool.get(name)
    assert replica is not None
    hold_key = keys_owned_by(lb.balancer.pool, name, 1)[0]
    held = spawn(get(lb.client, lb.url + "/_t/hold", hold_key))
    await wait_for(lambda: replica.in_flight == 1)
    queued = []
    for i, key in enumerate(keys):
        queued.append(spawn(get(lb.client, lb.url + f"/home?n={i}", key)))
        await wait_for(lambda i=i: front.waiting() == i + 1)
    return held, queued


@pytest.mark.lbconfig(replicas=1, proxy=CAPPED)
async def test_queued_requests_move_to_a_replica_that_joins(lb: BalancerUnderTest) -> None:
    """Scale-up (or /add) while one replica's queue is long: the keys the new replica now
    owns are served by it at once, not after the backlog (or a 503 queue timeout)."""
    pool = lb.balancer.pool
    first = pool.replicas()[0].name
    keys = [str(200000 + i) for i in range(12)]
    held, queued = await saturate(lb, first, keys)
    async with lb.client.post(lb.url + "/add", json={"n": 1, "hostnames": ["S9"]}) as r:
        assert r.status == 200
    moved = [t for t, k in zip(queued, keys, strict=True) if pool.owner(k).name == "S9"]
    stayed = [t for t in queued if t not in moved]
    assert moved and stayed  # Maglev gives the newcomer about half of the keys
    done, _ = await asyncio.wait(moved, timeout=5)
    assert len(done) == len(moved), "requests the new replica owns still wait on the old one"
    for task in moved:
        status, body = task.result()
        assert status == 200 and "S9" in body
    assert not held.done() and not any(t.done() for t in stayed)
    upstreams = lb.balancer.stats.upstreams
    assert upstreams is not None
    assert upstreams.redispatched == len(moved)
    async with lb.client.get(lb.url + "/lbproxy/metrics") as r:
        assert f"lbproxy_queue_redispatched_total {len(moved)}.0" in await r.text()
    lb.backend.release.set()
    assert (await held)[0] == 200
    for task in stayed:
        status, body = await task
        assert status == 200 and first in body
    assert upstreams.queue_timeouts == 0


@pytest.mark.lbconfig(replicas=2, proxy=CAPPED)
async def test_queued_requests_leave_a_replica_that_stops_answering(
    lb: BalancerUnderTest,
) -> None:
    """A replica hangs with a queue behind its one connection: once its heartbeat takes
    it off the ring, the queued requests go to the replica that owns their keys now."""
    pool = lb.balancer.pool
    victim, other = (r.name for r in pool.replicas())
    keys = keys_owned_by(pool, victim, 6)
    held, queued = await saturate(lb, victim, keys)
    lb.backend.hang(victim)
    done, _ = await asyncio.wait(queued, timeout=5)
    assert len(done) == len(queued), "queued requests stayed behind a replica that hangs"
    for task in queued:
        status, body = task.result()
        assert status == 200 and other in body
    assert not held.done()
    upstreams = lb.balancer.stats.upstreams
    assert upstreams is not None
    assert upstreams.redispatched == len(queued) and upstreams.queue_timeouts == 0
    lb.backend.release.set()
    await held  # answered or failed over; the test is about the queue


@pytest.mark.lbconfig(replicas=2, stop_timeout=10.0, proxy=CAPPED)
async def test_queued_requests_leave_a_replica_being_removed(lb: BalancerUnderTest) -> None:
    """/rm drains in-flight requests; queued ones are not in flight on the replica yet, so
    they go to the new owner at once instead of waiting out the drain."""
    pool = lb.balancer.pool
    victim, other = (r.name for r in pool.replicas())
    keys = keys_owned_by(pool, victim, 6)
    held, queued = await saturate(lb, victim, keys)
    removing = asyncio.create_task(
        lb.client.delete(lb.url + "/rm", json={"n": 1, "hostnames": [victim]})
    )
    done, _ = await asyncio.wait(queued, timeout=5)
    assert len(done) == len(queued), "queued requests waited for a replica being removed"
    for task in queued:
        status, body = task.result()
        assert status == 200 and other in body
    assert not held.done()  # the removed replica still drains it
    front = lb.balancer.stats
    assert front.upstream_errors.get("connect_refused", 0) == 0  # moved, not failed over
    lb.backend.release.set()
    status, _ = await held
    assert status == 200  # the drain let the in-flight request finish
    async with await removing as r:
        assert r.status == 200
