"""Short chaos soaks (lbproxy_tools/soak.py): replicas killed under steady load, nothing may fail.

The process soak kills a random replica every 2 s for 10 s; the Docker one (run whenever
`docker info` answers, failing if the engine is there but the stack cannot run) every 3 s
for 12 s. Each asserts zero failed requests, every kill recovered, and the pool back at
N = 3 with the same names, up, on the ring and running, and nothing left behind.
`make soak` runs the full 60 s soaks; docs/operations.md has their figures.
"""

from __future__ import annotations

import pytest

from lbproxy_tools import soak
from lbproxy_tools.launcher import docker_engine_answers

pytestmark = pytest.mark.process


def _assert_clean_soak(result: soak.SoakResult, kills: int) -> None:
    r = result
    report = soak.format_report(r)
    assert r.failed == 0, f"requests failed during the soak:\n{report}"
    assert len(r.kills) == kills, report
    assert not r.unrecovered, report
    assert r.replacements >= kills, report
    assert r.pool_back, report
    assert sorted(r.names_after) == sorted(r.names_before), report
    assert len(r.names_after) == 3, report
    assert not r.leaked, report
    assert r.requests > 0 and r.passed, report


@pytest.mark.slow
def test_process_soak_kill_every_2s_for_10s_loses_nothing() -> None:
    result = soak.run("process", duration=10, kill_every=2, concurrency=16, seed=7)
    _assert_clean_soak(result, kills=4)
    assert result.names_before == ["Server 1", "Server 2", "Server 3"]


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(900)  # builds the images first when they are stale (minutes when busy)
def test_docker_soak_kill_every_3s_for_12s_loses_nothing() -> None:
    if not docker_engine_answers():
        pytest.skip("no Docker engine answers `docker info`")
    result = soak.run(
        "docker",
        duration=12,
        kill_every=3,
        concurrency=16,
        seed=7,
        project="lbproxy-soak-test",
    )
    _assert_clean_soak(result, kills=3)
