"""TLS termination (issue 9): --tls-cert/--tls-key, TLS 1.2+, ALPN http/1.1.

The certificate is made at test time with the ``openssl`` command line (the test is
skipped, saying so, where it is missing); the replicas behind stay plain HTTP.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from lbproxy.cli import build_parser, config_from_args
from lbproxy.frontend.tls import TLSConfigError, server_context
from lbproxy.server import BalancerServer
from tests.conftest import InProcessBackend, fast_config

pytestmark = pytest.mark.inprocess


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return crt, key


@pytest.fixture
async def tls_server(cert: tuple[Path, Path]) -> AsyncIterator[BalancerServer]:
    crt, key = cert
    backend = InProcessBackend()
    server = BalancerServer(fast_config(tls_cert=str(crt), tls_key=str(key)), backend)
    await server.start()
    yield server
    await server.stop()


def client_context(crt: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(crt))
    return ctx


async def test_https_request_reaches_a_replica(
    tls_server: BalancerServer, cert: tuple[Path, Path]
) -> None:
    assert tls_server.url.startswith("https://")
    ctx = client_context(cert[0])
    async with aiohttp.ClientSession() as client:
        async with client.get(tls_server.url + "/home", ssl=ctx) as r:
            assert r.status == 200
            assert (await r.json())["message"].startswith("Hello from Server: ")
        async with client.post(tls_server.url + "/_t/echo", data=b"x" * 1000, ssl=ctx) as r:
            echo = await r.json()
    assert echo["body_len"] == 1000
    assert echo["headers"].get("X-Forwarded-Proto") == "https"


async def test_alpn_picks_http11_and_the_version_is_modern(
    tls_server: BalancerServer, cert: tuple[Path, Path]
) -> None:
    ctx = client_context(cert[0])
    ctx.set_alpn_protocols(["h2", "http/1.1"])  # what browsers and curl offer
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", tls_server.port, ssl=ctx, server_hostname="localhost"
    )
    tls = writer.get_extra_info("ssl_object")
    assert tls.selected_alpn_protocol() == "http/1.1"
    assert tls.version() in ("TLSv1.2", "TLSv1.3")
    writer.write(b"GET /home HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_tls_below_1_2_is_refused(
    tls_server: BalancerServer, cert: tuple[Path, Path]
) -> None:
    ctx = client_context(cert[0])
    try:
        with warnings.catch_warnings():  # deprecated on purpose: this is the old client
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _, writer = await asyncio.open_connection(
            "127.0.0.1", tls_server.port, ssl=ctx, server_hostname="localhost"
        )
        writer.close()


def test_bad_tls_settings_are_one_sentence(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="--tls-key needs --tls-cert"):
        config_from_args(build_parser().parse_args(["serve", "--tls-key", str(cert[1])]))
    with pytest.raises(TLSConfigError, match="no such file"):
        server_context(str(tmp_path / "missing.pem"), None)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(TLSConfigError, match="cannot be loaded"):
        server_context(str(junk), str(cert[1]))
    args = build_parser().parse_args(
        ["serve", "--tls-cert", str(cert[0]), "--tls-key", str(cert[1])]
    )
    config = config_from_args(args)
    assert config.tls_cert == str(cert[0]) and config.tls_key == str(cert[1])


async def test_a_bad_certificate_fails_before_any_replica_starts(tmp_path: Path) -> None:
    """A typo in --tls-key must not start (and then stop) a pool: the context is loaded
    first, so the backend launched nothing when the error surfaces."""
    backend = InProcessBackend()
    server = BalancerServer(fast_config(tls_cert=str(tmp_path / "missing.pem")), backend)
    with pytest.raises(TLSConfigError, match="no such file"):
        await server.start()
    assert backend.launched == []
