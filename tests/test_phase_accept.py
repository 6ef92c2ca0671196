"""Issue 14's accept-to-parse part of the phase breakdown (--phase-timings), end to end.

``accept`` is observed once per connection (accept until its first request's first byte),
``gap`` once per later request on it (the previous answer until the next first byte),
``total`` once per proxied request (first byte until the last byte handed over).
"""

from __future__ import annotations

import asyncio

import pytest

from lbproxy.config import ProxyConfig
from lbproxy.frontend.phases import PHASES
from tests.conftest import BalancerUnderTest, wait_for

pytestmark = pytest.mark.inprocess


def phase_counts(text: str) -> dict[str, float]:
    return {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("lbproxy_phase_seconds_count{")
    }


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return head.split(b"\r\n", 1)[0]


@pytest.mark.lbconfig(proxy=ProxyConfig(phase_timings=True))
async def test_accept_and_keep_alive_gap_are_timed_per_connection(lb: BalancerUnderTest) -> None:
    stats = lb.balancer.stats
    assert stats.phases is not None
    before = [sum(c) for c in stats.phases.counts]
    host, port = lb.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for i in range(3):  # three requests, one after the other, on one connection
            writer.write(
                b"GET /home HTTP/1.1\r\nHost: t\r\nX-Request-ID: %d\r\n\r\n" % (400000 + i)
            )
            assert await read_answer(reader) == b"HTTP/1.1 200 OK"
    finally:
        writer.close()
    names = ("accept", "gap", "total")
    phases = stats.phases

    def added(name: str) -> int:
        i = PHASES.index(name)
        return sum(phases.counts[i]) - before[i]

    await wait_for(lambda: added("total") == 3)
    assert [added(n) for n in names] == [1, 2, 3]
    async with lb.client.get(lb.url + "/lbproxy/metrics") as r:
        counts = phase_counts(await r.text())
    assert all(counts[n] >= 1 for n in names)
