"""Forwarded headers (Traefik's default): X-Forwarded-For/-Proto/-Host and RFC 7239
Forwarded on every request; a client's own copies are replaced unless it is a trusted
proxy (``--trusted-proxies``), whose chain is extended."""

from __future__ import annotations

import pytest

from lbproxy.config import ProxyConfig
from lbproxy.frontend import forwarded
from tests.conformance_kit import get, rig

SPOOF = ("X-Forwarded-For: 6.6.6.6", "Forwarded: for=6.6.6.6", "X-Forwarded-Host: evil.test")


@pytest.mark.unit
def test_lines_for_ipv4_and_ipv6() -> None:
    assert forwarded.lines("10.1.2.3", b"http", b"a.test:8080") == [
        b"X-Forwarded-For: 10.1.2.3\r\n",
        b"X-Forwarded-Proto: http\r\n",
        b"X-Forwarded-Host: a.test:8080\r\n",
        b'Forwarded: for=10.1.2.3;proto=http;host="a.test:8080"\r\n',
    ]
    assert forwarded.lines("::1", b"https", b"")[-1] == b'Forwarded: for="[::1]";proto=https\r\n'


@pytest.mark.unit
def test_trusted_chain_is_extended() -> None:
    got = forwarded.lines(
        "10.0.0.5",
        b"http",
        b"inner.test",
        [
            (b"x-forwarded-for", b"1.2.3.4"),
            (b"x-forwarded-proto", b"https"),
            (b"forwarded", b"for=1.2.3.4;proto=https"),
        ],
    )
    assert got[0] == b"X-Forwarded-For: 1.2.3.4, 10.0.0.5\r\n"
    assert got[1] == b"X-Forwarded-Proto: https\r\n"
    assert got[3].startswith(b"Forwarded: for=1.2.3.4;proto=https, for=10.0.0.5;")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("peer", "nets", "trusted"),
    [
        ("127.0.0.1", "127.0.0.0/8", True),
        ("10.0.0.1", "127.0.0.0/8, 192.168.0.7", False),
        ("192.168.0.7", "127.0.0.0/8, 192.168.0.7", True),
        ("::ffff:10.1.1.1", "10.0.0.0/8", True),
        ("::1", "", False),
        ("", "0.0.0.0/0", False),
    ],
)
def test_trust(peer: str, nets: str, trusted: bool) -> None:
    assert forwarded.is_trusted(peer, forwarded.parse_networks(nets)) is trusted


@pytest.mark.unit
def test_bad_network_is_named() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300' is not"):
        forwarded.parse_networks("10.0.0.0/8,10.0.0.300")


@pytest.mark.inprocess
async def test_client_supplied_fields_are_replaced() -> None:
    async with rig() as r:
        c = await r.client()
        assert (await c.request(get("/ok", "a", *SPOOF))).status == 200
        (seen,) = r.upstream.requests()
        assert seen.header(b"x-forwarded-for") == [b"127.0.0.1"]
        assert seen.header(b"x-forwarded-proto") == [b"http"]
        assert seen.header(b"x-forwarded-host") == [b"lb.test"]
        assert seen.header(b"forwarded") == [b"for=127.0.0.1;proto=http;host=lb.test"]


@pytest.mark.inprocess
async def test_trusted_proxy_chain_is_appended() -> None:
    async with rig(proxy=ProxyConfig(trusted_proxies="127.0.0.0/8")) as r:
        c = await r.client()
        assert (await c.request(get("/ok", "a", *SPOOF))).status == 200
        (seen,) = r.upstream.requests()
        assert seen.header(b"x-forwarded-for") == [b"6.6.6.6, 127.0.0.1"]
        assert seen.header(b"x-forwarded-host") == [b"evil.test"]
        assert seen.header(b"forwarded") == [b"for=6.6.6.6, for=127.0.0.1;proto=http;host=lb.test"]
