"""The admin API declared once (control/api.py): one model gives validation and schema.

Every bad body is a BadRequest sentence (SPEC's 400 body once ``_guard`` wraps it), what the
parser accepts is what the OpenAPI schema says, and the document lists exactly the routes
the control app serves, with a documented 405 (and its ``Allow``) for every other method.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from aiohttp import web

from lbproxy.control.admin import OPERATIONS, AdminRoutes, answer_wrong_methods
from lbproxy.control.api import AddRequest, ChangeRequest, WeightRequest, parse, schema
from lbproxy.errors import RETRY_AFTER, BadRequest
from lbproxy.views import openapi
from tests.conftest import BalancerUnderTest

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("model", "payload", "message"),
    [
        (ChangeRequest, [1, 2], 'body must be a JSON object such as {"n": 3'),
        (ChangeRequest, None, "body must be a JSON object"),
        (ChangeRequest, {"hostnames": []}, 'missing field "n"'),
        (ChangeRequest, {"n": "2"}, '"n" must be an integer, got "2"'),
        (ChangeRequest, {"n": True}, '"n" must be an integer, got true'),
        (ChangeRequest, {"n": 2.5}, '"n" must be an integer, got 2.5'),
        (ChangeRequest, {"n": -1}, '"n" must be from 0 to 64, got -1'),
        (ChangeRequest, {"n": 100000}, '"n" must be from 0 to 64, got 100000'),
        (ChangeRequest, {"n": 1, "hostnames": "S5"}, '"hostnames" must be a list of strings'),
        (ChangeRequest, {"n": 1, "hostnames": [5]}, '"hostnames" must be a list of strings'),
        (ChangeRequest, {"n": 1, "weight": 2}, "unknown field(s): weight; expected n, hostnames"),
        (AddRequest, {"n": 1, "weight": 0}, '"weight" must be from 1 to 100, got 0'),
        (AddRequest, {"n": 1, "hostname": []}, "expected n, hostnames, weight"),
        (WeightRequest, {"hostname": "S1"}, 'missing field "weight"; the body must be like'),
        (WeightRequest, {"hostname": 5, "weight": 2}, '"hostname" must be a string, got 5'),
        (WeightRequest, {"hostname": "S1", "weight": "x" * 100}, 'got "xxxxx'),
    ],
)
def test_every_bad_body_is_one_sentence(model: type, payload: Any, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse(model, payload)
    assert info.value.status == 400
    assert message in info.value.message
    assert len(info.value.message) < 200 and "\n" not in info.value.message


def test_good_bodies_parse_with_defaults() -> None:
    assert parse(ChangeRequest, {"n": 2}) == ChangeRequest(n=2, hostnames=())
    assert parse(ChangeRequest, {"n": 2, "hostnames": None}).hostnames == ()
    assert parse(AddRequest, {"n": 1, "hostnames": ["S5"], "weight": 3}) == AddRequest(
        n=1, hostnames=("S5",), weight=3
    )
    assert parse(WeightRequest, WeightRequest.EXAMPLE) == WeightRequest("S5", 3)


@pytest.mark.parametrize("model", [ChangeRequest, AddRequest, WeightRequest])
def test_the_schema_is_the_parser(model: type) -> None:
    doc = schema(model)
    fields = dataclasses.fields(model)
    assert list(doc["properties"]) == [f.name for f in fields]
    assert doc["required"] == [f.name for f in fields if f.default is dataclasses.MISSING]
    assert doc["additionalProperties"] is False
    parse(model, doc["example"])  # the documented example is accepted
    for name, prop in doc["properties"].items():
        base = dict(doc["example"])
        if "maximum" in prop:
            with pytest.raises(BadRequest):
                parse(model, base | {name: prop["maximum"] + 1})
            parse(model, base | {name: prop["maximum"]})
        if "minimum" in prop:
            with pytest.raises(BadRequest):
                parse(model, base | {name: prop["minimum"] - 1})
        if prop.get("nullable"):
            parse(model, base | {name: None})
        elif name in doc["required"]:
            with pytest.raises(BadRequest):
                parse(model, base | {name: None})


def test_document_has_the_generated_request_schemas_and_the_weight_operation() -> None:
    schemas = openapi.OPENAPI["components"]["schemas"]
    for model in (ChangeRequest, AddRequest, WeightRequest):
        assert schemas[model.__name__] == schema(model)
    put = openapi.OPENAPI["paths"]["/lbproxy/weight"]["put"]
    assert put["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/WeightRequest"
    }
    assert set(put["responses"]) == {"200", "400", "401", "404", "413"}


@pytest.mark.parametrize(("path", "method"), [("/add", "post"), ("/rm", "delete")])
def test_the_admin_503s_document_their_retry_after(path: str, method: str) -> None:
    """The header the admin API's 503 answers (RFC 9110 10.2.3), with its one value, and
    not required: a balancer that is shutting down sends none."""
    refused = openapi.OPENAPI["paths"][path][method]["responses"]["503"]
    header = refused["headers"]["Retry-After"]
    assert header["schema"] == {"type": "string", "enum": [str(RETRY_AFTER)]}
    assert not header.get("required", False)
    assert "shutting down" in refused["description"]
    assert "Retry-After" in refused["description"]


def _served(app: web.Application) -> dict[str, set[str]]:
    routes: dict[str, set[str]] = {}
    for resource in app.router.resources():
        for route in resource:
            if route.method != "*":
                routes.setdefault(resource.canonical, set()).add(route.method)
    return routes


def _documented() -> dict[str, set[str]]:
    """path -> the methods the document says it serves (every answer but the 405)."""
    return {
        path: {m.upper() for m, op in item.items() if "405" not in op["responses"]}
        for path, item in openapi.OPENAPI["paths"].items()
    }


@pytest.mark.inprocess
async def test_every_route_of_the_control_app_is_documented_and_every_documented_one_routed(
    lb: BalancerUnderTest,
) -> None:
    """The real control app (create_app: admin, metrics, dashboard, this document) against
    the document: no route is missing from it (the dashboard was), none is invented."""
    plain = [r for r in lb.app.router.resources() if isinstance(r, web.PlainResource)]
    others = [r.canonical for r in lb.app.router.resources() if r not in plain]
    assert others == ["/{tail}"], "only the catch-all (proxied to the replicas) is undocumented"
    served = {p: m for p, m in _served(lb.app).items() if p != "/{tail}"}
    documented = _documented()
    # HEAD rides along with GET (where a GET route allows it); the document lists GET
    assert {p: m - {"HEAD"} for p, m in served.items()} == documented
    assert {op.path for op in OPERATIONS} <= set(documented)
    for path, item in openapi.OPENAPI["paths"].items():
        get = item["get"]
        if "405" in get["responses"] or "text/event-stream" in str(get["responses"]):
            continue  # a stream never ends: its content type is checked by its own test
        async with lb.client.get(lb.url + path, allow_redirects=False) as resp:
            (status,) = [s for s in get["responses"] if s.startswith(("2", "3"))]
            assert resp.status == int(status), path
            content = get["responses"][status].get("content")
            if content:
                assert resp.content_type == next(iter(content)), path


def test_every_other_method_is_a_documented_405_with_its_allow() -> None:
    app = web.Application()
    AdminRoutes(None, None).register(app)  # type: ignore[arg-type]
    openapi.register(app)
    answer_wrong_methods(app)
    served = _served(app)
    for path, item in openapi.OPENAPI["paths"].items():
        for method, op in item.items():
            if "405" not in op["responses"]:
                continue
            assert set(op["responses"]) == {"405"}
            allow = op["responses"]["405"]["headers"]["Allow"]["schema"]["enum"][0]
            if path in served:
                assert method.upper() not in served[path]
                assert allow == ", ".join(sorted(served[path]))


@pytest.mark.inprocess
@pytest.mark.parametrize("path", sorted(openapi.OPENAPI["paths"]))
async def test_the_documented_405s_are_what_the_balancer_answers(
    lb: BalancerUnderTest, path: str
) -> None:
    for method, op in openapi.OPENAPI["paths"][path].items():
        if "405" not in op["responses"]:
            continue
        allow = op["responses"]["405"]["headers"]["Allow"]["schema"]["enum"][0]
        async with lb.client.request(method.upper(), lb.url + path) as resp:
            assert resp.status == 405, (method, path)
            assert resp.headers["Allow"] == allow
            assert (await resp.json())["status"] == "failure"
