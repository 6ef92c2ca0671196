"""A wrong method on one of the balancer's own paths: 405 with ``Allow`` (RFC 9110 15.5.6),
in SPEC's failure shape; a path that does not exist stays a 404."""

from __future__ import annotations

import pytest

from tests.conftest import BalancerUnderTest

pytestmark = pytest.mark.inprocess

CASES = [
    ("POST", "/rep", {"GET", "HEAD"}),
    ("DELETE", "/rep", {"GET", "HEAD"}),
    ("GET", "/add", {"POST"}),
    ("PUT", "/add", {"POST"}),
    ("PUT", "/rm", {"DELETE"}),
    ("GET", "/rm", {"DELETE"}),
    ("POST", "/lbproxy/status", {"GET", "HEAD"}),
    ("DELETE", "/lbproxy/events", {"GET", "HEAD"}),
    ("PATCH", "/lbproxy/metrics", {"GET", "HEAD"}),
    ("OPTIONS", "/rep", {"GET", "HEAD"}),
]


@pytest.mark.parametrize(("method", "path", "allowed"), CASES)
async def test_wrong_method_is_405_with_allow(
    lb: BalancerUnderTest, method: str, path: str, allowed: set[str]
) -> None:
    before = lb.balancer.pool.names()
    async with lb.client.request(method, lb.url + path, json={"n": 1}) as resp:
        assert resp.status == 405
        assert {m.strip() for m in resp.headers["Allow"].split(",")} == allowed
        body = await resp.json()
    assert body["status"] == "failure"
    assert body["message"].startswith("<Error> ")
    assert f"method {method} is not allowed on '{path}'" in body["message"]
    assert lb.balancer.pool.names() == before  # nothing changed


async def test_right_methods_still_work_and_unknown_paths_stay_404(lb: BalancerUnderTest) -> None:
    status, body = await lb.get_json("/rep")
    assert status == 200 and body["status"] == "successful"  # type: ignore[index]
    async with lb.client.post(lb.url + "/lbproxy/nope") as resp:
        assert resp.status == 404
        assert "Allow" not in resp.headers
