"""``--key`` end to end: every key source routes the same value to the same replica.

Real sockets through the real relay to real ``server_app`` replicas (``/home`` names the
replica that answered). X-Request-ID is always set on the forwarded request and on the
response, whatever the key source (SPEC, Task 3).
"""

from __future__ import annotations

import random
import re

import aiohttp
import pytest

from lbproxy.config import ProxyConfig
from tests.conftest import BalancerUnderTest

pytestmark = pytest.mark.inprocess

SOURCES = ("header:X-User", "query:id", "cookie:sid", "client-ip", "path", "header:X-Request-ID")


def _spread(source: str, value: str, noise: int) -> tuple[str, dict[str, str]]:
    """Path and headers of a request keyed ``value``; ``noise`` changes everything else."""
    headers = {"X-Noise": str(noise)}
    path = f"/home?n={noise}"
    if source == "header:X-User":
        headers["X-User"] = value
    elif source == "query:id":
        path += f"&id={value}"
    elif source == "cookie:sid":
        headers["Cookie"] = f"n={noise}; sid={value}"
    elif source == "header:X-Request-ID":
        headers["X-Request-ID"] = value
    if source != "header:X-Request-ID":
        headers["X-Request-ID"] = str(100000 + noise)  # must not matter
    return path, headers


async def _served_by(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> str:
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    return str(body["message"]).removeprefix("Hello from Server: ")


@pytest.mark.parametrize("source", SOURCES)
async def test_same_key_value_reaches_the_same_replica(source: str) -> None:
    # A fixture per source would hide the parameter; start the balancer here instead.
    from tests.conftest import InProcessBackend, fast_config, start_balancer

    config = fast_config(replicas=4, proxy=ProxyConfig(key=source))
    backend = InProcessBackend()
    server = await start_balancer(config, backend)
    pool = server.balancer.pool
    rng = random.Random(source)
    owners: set[str] = set()
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(24):
                value = f"{rng.randrange(10**6, 10**7)}"
                if source == "client-ip":
                    # Every 127/8 address is loopback: one client address per key value.
                    value = f"127.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}.1"
                seen = set()
                for noise in range(3):
                    if source == "client-ip":
                        connector = aiohttp.TCPConnector(local_addr=(value, 0))
                        async with aiohttp.ClientSession(connector=connector) as own:
                            seen.add(await _served_by(own, server.url + f"/home?n={noise}", {}))
                        continue
                    path, headers = _spread(source, value, noise)
                    seen.add(await _served_by(client, server.url + path, headers))
                key = "/home" if source == "path" else value
                assert seen == {pool.owner(key).name}
                owners |= seen
    finally:
        await server.stop()
    if source != "path":  # every request of the path source has the same key
        assert len(owners) > 1, "24 key values all went to one replica: the key was ignored"


@pytest.mark.lbconfig(proxy=ProxyConfig(key="query:id"))
async def test_absent_source_falls_back_to_a_six_digit_request_id(lb: BalancerUnderTest) -> None:
    async with lb.client.get(lb.url + "/_t/echo") as resp:
        body = await resp.json()
        sent = resp.headers["X-Request-ID"]
    assert re.fullmatch(r"[1-9]\d{5}", sent)
    assert body["headers"]["X-Request-ID"] == sent
    assert body["replica"] == lb.balancer.pool.owner(sent).name


@pytest.mark.lbconfig(proxy=ProxyConfig(key="cookie:sid"))
async def test_request_id_is_forwarded_and_returned_with_any_key(lb: BalancerUnderTest) -> None:
    headers = {"X-Request-ID": "abc-1", "Cookie": "sid=u42"}
    async with lb.client.get(lb.url + "/_t/echo", headers=headers) as resp:
        body = await resp.json()
        assert resp.headers["X-Request-ID"] == "abc-1"
    assert body["headers"]["X-Request-ID"] == "abc-1"
    assert body["replica"] == lb.balancer.pool.owner("u42").name
    # Absent cookie: the client's own request id is the key, as with the default source.
    async with lb.client.get(lb.url + "/_t/echo", headers={"X-Request-ID": "777777"}) as resp:
        body = await resp.json()
    assert body["replica"] == lb.balancer.pool.owner("777777").name
