"""The load client: counts, errors, ids and the `lbproxy loadtest` command."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import pytest

from lbproxy_tools.launcher import free_loopback_port
from lbproxy_tools.loadtest import (
    LatencySummary,
    Meter,
    format_table,
    make_ids,
    replica_of,
    run_load,
)
from tests.conftest import BalancerUnderTest, wait_for

pytestmark = pytest.mark.inprocess


async def served(client: aiohttp.ClientSession, url: str) -> dict[str, int]:
    async with client.get(url + "/lbproxy/status") as resp:
        body = await resp.json()
    return {r["name"]: r["served"] for r in body["message"]["replicas"]}


# -- pure parts -----------------------------------------------------------------------------


@pytest.mark.unit
def test_random_ids_are_seeded_six_digit_numbers() -> None:
    ids = make_ids("random", 200, seed=7)
    assert ids == make_ids("random", 200, seed=7)
    assert ids != make_ids("random", 200, seed=8)
    assert all(i.isdigit() and len(i) == 6 for i in ids)


@pytest.mark.unit
def test_sequential_and_file_ids(tmp_path: Path) -> None:
    assert make_ids("sequential", 3) == ["100000", "100001", "100002"]
    f = tmp_path / "ids.txt"
    f.write_text("7\n\n  42 \nabc\n")
    assert make_ids(str(f), 10) == ["7", "42", "abc"]
    with pytest.raises(ValueError, match="not 'random' or 'sequential'"):
        make_ids(str(tmp_path / "missing.txt"), 1)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no ids"):
        make_ids(str(tmp_path / "empty.txt"), 1)


@pytest.mark.unit
def test_replica_of_reads_the_body_then_a_header() -> None:
    body = b'{"message": "Hello from Server: Server 2", "status": "successful"}'
    assert replica_of(body) == "Server 2"
    assert replica_of(b"", {"X-Served-By": "S5"}) == "S5"
    assert replica_of(b'{"message": "other"}', {}) is None
    assert replica_of(b"[1, 2]") is None
    assert replica_of(b"{not json") is None


@pytest.mark.unit
def test_latency_summary_uses_nearest_rank() -> None:
    s = LatencySummary.of([k / 1000 for k in range(1, 101)])  # 1..100 ms
    assert (s.count, s.p50, s.p90, s.p99, s.max) == (100, 50.0, 90.0, 99.0, 100.0)
    assert s.mean == pytest.approx(50.5)
    assert LatencySummary.of([]).count == 0


# -- against a balancer (replicas in-process, real sockets) -----------------------------------


async def test_counts_sum_to_requests_and_match_served_counters(lb: BalancerUnderTest) -> None:
    before = await served(lb.client, lb.url)
    result = await run_load(
        lb.url, requests=500, concurrency=20, ids=make_ids("random", 500, seed=1)
    )
    after = await served(lb.client, lb.url)
    assert result.errors == {}
    assert result.completed == result.ok == 500
    assert result.unattributed == 0
    assert sum(result.per_replica.values()) == 500
    assert set(result.per_replica) <= {"Server 1", "Server 2", "Server 3"}
    delta = {name: after[name] - before.get(name, 0) for name in after}
    assert {n: c for n, c in delta.items() if c} == result.per_replica
    assert result.latency.count == 500
    assert result.rps > 0 and result.duration > 0


async def test_same_seed_gives_same_counts(lb: BalancerUnderTest) -> None:
    runs = [
        await run_load(lb.url, requests=300, concurrency=10, ids=make_ids("random", 300, seed=5))
        for _ in range(2)
    ]
    assert runs[0].per_replica == runs[1].per_replica
    other = await run_load(
        lb.url, requests=300, concurrency=10, ids=make_ids("random", 300, seed=6)
    )
    assert sum(other.per_replica.values()) == 300


async def test_errors_are_counted_by_http_status(lb: BalancerUnderTest) -> None:
    result = await run_load(lb.url, requests=20, concurrency=4, ids=["1"], path="/nope")
    assert result.errors == {"400": 20}
    assert result.per_replica == {}
    assert "400" in format_table(result)


async def test_transport_errors_are_counted_by_exception_class() -> None:
    url = f"http://127.0.0.1:{free_loopback_port()}"  # nothing listens there
    result = await run_load(url, requests=5, concurrency=2, ids=["1"], timeout=2)
    assert result.completed == 5
    assert result.errors == {"ClientConnectorError": 5}


async def test_ids_cycle_and_samples_are_recorded(lb: BalancerUnderTest) -> None:
    result = await run_load(
        lb.url, requests=30, concurrency=3, ids=["111111", "222222"], record=True
    )
    assert len(result.samples) == 30
    # two ids: at most two replicas, each id always on the same one
    assert 1 <= len(result.per_replica) <= 2
    assert all(s.outcome == "ok" and s.replica for s in result.samples)


async def test_rate_paces_and_stop_ends_early(lb: BalancerUnderTest) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    meter = Meter()
    rate, paced = 100.0, 20
    began = loop.time()
    task = asyncio.create_task(
        run_load(
            lb.url, requests=10_000, concurrency=5, ids=["1"], rate=rate, stop=stop, meter=meter
        )
    )
    await wait_for(lambda: meter.done >= paced)
    # Request i is not sent before start + i / rate: 20 answers mean request 19 was sent.
    assert loop.time() - began >= (paced - 1) / rate * 0.99
    done = meter.done
    stop.set()
    result = await task
    # After the stop only the requests already in flight finish: one per worker at most.
    assert done <= result.completed <= done + 5
    assert result.errors == {}


# -- the command: a real `lbproxy loadtest` process (process tier) ---------------------------


@pytest.mark.process
async def test_cli_json_end_to_end(lb: BalancerUnderTest, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    before = await served(lb.client, lb.url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lbproxy",
        "loadtest",
        "--url",
        lb.url,
        "--requests",
        "200",
        "--concurrency",
        "10",
        "--seed",
        "3",
        "--json",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, stderr.decode()
    figures = json.loads(out.read_text())
    assert figures["requests"] == figures["completed"] == figures["ok"] == 200
    assert figures["failed"] == 0 and figures["errors"] == {}
    assert figures["seed"] == 3
    assert sum(figures["per_replica"].values()) == 200
    assert set(figures["latency_ms"]) == {"count", "mean", "p50", "p90", "p99", "max"}
    assert figures["rps"] > 0
    after = await served(lb.client, lb.url)
    delta = {n: after[n] - before.get(n, 0) for n in after if after[n] - before.get(n, 0)}
    assert delta == figures["per_replica"]
    text = stdout.decode()
    assert "throughput" in text and "p99" in text
    for name, count in figures["per_replica"].items():
        assert name in text and str(count) in text
    # the progress bar stays off when stderr is not a terminal
    assert "req/s]" not in stderr.decode()


@pytest.mark.process
async def test_cli_exits_1_when_requests_fail(lb: BalancerUnderTest) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lbproxy",
        "loadtest",
        "--url",
        lb.url,
        "--requests",
        "5",
        "--path",
        "/nope",
        "--json",
        "-",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 1
    assert json.loads(stdout)["errors"] == {"400": 5}


@pytest.mark.process
@pytest.mark.slow
async def test_against_a_real_balancer_process() -> None:
    from lbproxy_tools.launcher import run_balancer

    with run_balancer() as real:
        async with aiohttp.ClientSession() as client:
            before = await served(client, real.url)
            result = await run_load(
                real.url, requests=500, concurrency=50, ids=make_ids("random", 500, seed=9)
            )
            after = await served(client, real.url)
    assert result.errors == {} and result.ok == 500
    delta = {n: after[n] - before.get(n, 0) for n in after if after[n] - before.get(n, 0)}
    assert delta == result.per_replica
