"""Tail latency under load (issue 14) and upstream connection care (issue 9, tail's part).

Every test waits on counters or events; none sleeps and samples.
"""

from __future__ import annotations

import pytest

from lbproxy.config import ProxyConfig
from tests.conftest import BalancerUnderTest

pytestmark = pytest.mark.inprocess


@pytest.mark.lbconfig(proxy=ProxyConfig(phase_timings=True))
async def test_phase_timings_reach_the_metrics(lb: BalancerUnderTest) -> None:
    for i in range(5):
        async with lb.client.get(lb.url + "/home", headers={"X-Request-ID": str(300000 + i)}) as r:
            assert r.status == 200
    async with lb.client.get(lb.url + "/lbproxy/metrics") as r:
        text = await r.text()
    counts = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("lbproxy_phase_seconds_count{")
    }
    for phase in ("head", "pipeline", "acquire", "upstream", "relay"):
        assert counts[phase] == 5, (phase, counts)
