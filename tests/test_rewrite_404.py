"""``--rewrite-404``: SPEC's 400 body for a missing endpoint only when the replicas are
server_app; a user's own service's 404 reaches the client unchanged."""

from __future__ import annotations

import pytest

from lbproxy.cli import build_parser, config_from_args
from lbproxy.config import ProxyConfig
from tests.conftest import BalancerUnderTest


@pytest.mark.unit
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], True),
        (["--backend", "docker"], True),
        (["--replica-cmd", "python3 -m http.server {port}"], False),
        (["--backend", "docker", "--docker-image", "python:3.11-slim"], False),
        (["--replica-cmd", "python3 -m http.server {port}", "--rewrite-404", "on"], True),
        (["--rewrite-404", "off"], False),
    ],
)
def test_default_is_on_only_for_server_app(argv: list[str], expected: bool) -> None:
    config = config_from_args(build_parser().parse_args(["serve", *argv]))
    assert config.proxy.rewrite_404 is expected


@pytest.mark.inprocess
async def test_on_turns_a_replica_404_into_spec_400(lb: BalancerUnderTest) -> None:
    async with lb.client.get(lb.url + "/nope") as resp:
        assert resp.status == 400
        assert await resp.json() == {
            "message": "<Error> '/nope' endpoint does not exist in server replicas",
            "status": "failure",
        }


@pytest.mark.inprocess
@pytest.mark.lbconfig(proxy=ProxyConfig(rewrite_404=False))
async def test_off_passes_the_replica_404_through(lb: BalancerUnderTest) -> None:
    async with lb.client.get(lb.url + "/nope", headers={"X-Request-ID": "123456"}) as resp:
        assert resp.status == 404
        assert resp.headers["X-Request-ID"] == "123456"
        body = await resp.text()
    assert "endpoint does not exist" not in body
    assert "404" in body  # aiohttp's own "404: Not Found" page, as the replica sent it
