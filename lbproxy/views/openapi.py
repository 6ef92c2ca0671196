"""The OpenAPI 3.0 document of the balancer's own endpoints, served at /lbproxy/openapi.json.

It describes what the balancer answers itself (SPEC's /rep, /add, /rm and the operator
views under /lbproxy/); every other path is proxied to the replicas and is theirs to
document. The paths are generated from the declared operations (control/admin.py's
``OPERATIONS`` and the two views below), the request schemas from the body models
(control/api.py), and every method a path does not serve is documented as its 405 with
the ``Allow`` it answers. Only the answers' shapes are written here. The schemas are exact
where SPEC is exact (the /rep body, the failure body) so that a fuzzer
(tests/test_fuzz_admin.py runs schemathesis against it) can hold the balancer to them.
OpenAPI 3.0.3 rather than 3.1: the widest tool support.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from lbproxy.control.admin import MAX_ADMIN_BODY, OPERATIONS
from lbproxy.control.api import AddRequest, ChangeRequest, Operation, WeightRequest, schema
from lbproxy.control.pool import MAX_WEIGHT
from lbproxy.views.dashboard import PAGE_PATH, RETRY_MS, STREAM_PATH

__all__ = ["OPENAPI", "OPENAPI_PATH", "document", "openapi_handler", "register"]

OPENAPI_PATH = "/lbproxy/openapi.json"

_JSON = "application/json"
#: Methods documented as 405 where a path does not serve them.
_METHODS = ("get", "put", "post", "delete", "patch")

#: The operations a view module routes itself (metrics.py, dashboard.py, this module).
VIEW_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/lbproxy/metrics",
        "metrics",
        "Prometheus metrics (text exposition format)",
        ok=({"type": "string"}, "Counters, gauges and histograms of the balancer."),
        ok_content="text/plain",
    ),
    Operation(
        "GET",
        OPENAPI_PATH,
        "openapi",
        "This document",
        ok=({"type": "object"}, "The OpenAPI 3.0 document."),
    ),
    Operation(
        "GET",
        PAGE_PATH,
        "dashboard",
        "The live dashboard (one self-contained page)",
        description="HTML with its CSS and JavaScript inline, under a Content-Security-Policy "
        "that lets it load nothing from elsewhere; it follows the pool through "
        f"{STREAM_PATH}.",
        ok=({"type": "string"}, "The dashboard page."),
        ok_content="text/html",
    ),
    Operation(
        "GET",
        PAGE_PATH + "/",
        "dashboardSlash",
        "The dashboard's address with a trailing slash: a redirect to it",
        ok=(
            {"type": "string"},
            "Permanent redirect to the page (its stream's relative URL "
            "resolves only from the slash-less address).",
        ),
        ok_content=None,
        ok_status=308,
        ok_headers=(("Location", "../dashboard"),),
    ),
    Operation(
        "GET",
        STREAM_PATH,
        "dashboardStream",
        "The dashboard's server-sent events: pool snapshots and events as they happen",
        description="An endless text/event-stream: a `snapshot` event first (with the recent "
        "pool events), then each pool event as it happens, a fresh snapshot every few "
        "seconds and keep-alive comments. No HEAD: a stream has no length to announce.",
        ok=({"type": "string"}, "The event stream (never ends while the balancer runs)."),
        ok_content="text/event-stream",
        errors=(
            (
                503,
                "Too many dashboard streams are open, or the balancer is shutting down; "
                "retry after `Retry-After` seconds.",
            ),
        ),
        # RFC 9110 15.6.4: a 503 may say when to come back (10.2.3); the page's own retry.
        error_headers=((503, "Retry-After", str(RETRY_MS // 1000)),),
        head=False,
    ),
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _failure(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref("Failure")}}}


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "tags": [op.tag], "summary": op.summary}
    if op.description:
        out["description"] = op.description
    if op.query:
        out["parameters"] = [dict(p) for p in op.query]
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {_JSON: {"schema": _ref(op.body.__name__)}},
        }
    ok_schema, ok_text = op.ok
    shape = _ref(ok_schema) if isinstance(ok_schema, str) else ok_schema
    ok: dict[str, Any] = {"description": ok_text}
    if op.ok_content is not None:
        ok["content"] = {op.ok_content: {"schema": shape}}
    if op.ok_headers:
        ok["headers"] = {
            name: {"schema": {"type": "string", "enum": [value]}} for name, value in op.ok_headers
        }
    responses: dict[str, Any] = {str(op.ok_status): ok}
    responses |= {str(status): _failure(text) for status, text in op.errors}
    for status, name, value in op.error_headers:
        headers = responses[str(status)].setdefault("headers", {})
        headers[name] = {"schema": {"type": "string", "enum": [value]}}
    if op.token:
        # Open unless the balancer runs with --admin-token (LBPROXY_ADMIN_TOKEN).
        out["security"] = [{}, {"adminToken": []}]
        responses["401"] = {
            **_failure(
                "The balancer has an admin token and the request did not carry it as "
                "`Authorization: Bearer <token>`."
            ),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        }
    if op.body is not None:
        responses["413"] = _failure(f"The request body is larger than {MAX_ADMIN_BODY} bytes.")
    out["responses"] = dict(sorted(responses.items()))
    return out


def _not_allowed(path: str, method: str, served: list[Operation]) -> dict[str, Any]:
    """admin.answer_wrong_methods' 405 for ``method`` on ``path``, with its exact Allow."""
    methods = {op.method for op in served} | (
        {"HEAD"} if any(op.method == "GET" and op.head for op in served) else set()
    )
    allow = ", ".join(sorted(methods))
    return {
        "operationId": f"{served[0].operation_id}{method.capitalize()}NotAllowed",
        "tags": [served[0].tag],
        "summary": f"{method.upper()} is not served here",
        "responses": {
            "405": {
                **_failure(f"Method not allowed (RFC 9110 15.5.6); use {allow}."),
                "headers": {"Allow": {"schema": {"type": "string", "enum": [allow]}}},
            }
        },
    }


def _paths(operations: tuple[Operation, ...]) -> dict[str, Any]:
    by_path: dict[str, list[Operation]] = {}
    for op in operations:
        by_path.setdefault(op.path, []).append(op)
    paths: dict[str, Any] = {}
    for path, served in by_path.items():
        item = {op.method.lower(): _operation(op) for op in served}
        for method in _METHODS:
            if method not in item:
                item[method] = _not_allowed(path, method, served)
        paths[path] = item
    return paths


_STR: dict[str, Any] = {"type": "string"}
_COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
_NAMES: dict[str, Any] = {"type": "array", "items": _STR}


def _object(
    properties: dict[str, Any], *, required: list[str] | None = None, closed: bool = False
) -> dict[str, Any]:
    """An object schema; every property is required unless ``required`` says otherwise."""
    out: dict[str, Any] = {"type": "object", "properties": properties}
    out["required"] = list(properties) if required is None else required
    if closed:
        out["additionalProperties"] = False
    return out


def _answer(message: dict[str, Any], description: str, closed: bool = False) -> dict[str, Any]:
    """SPEC's success envelope ``{"message": ..., "status": "successful"}``."""
    status = {"type": "string", "enum": ["successful"]}
    return _object({"message": message, "status": status}, closed=closed) | {
        "description": description
    }


#: The answers' shapes (what the handlers build); the request bodies are generated.
_RESPONSES: dict[str, Any] = {
    "Failure": _object(
        {
            "message": {"type": "string", "pattern": "^<Error> "},
            "status": {"type": "string", "enum": ["failure"]},
        },
        closed=True,
    )
    | {"description": "SPEC's failure body, for every error the balancer answers itself."},
    "Replicas": _answer(
        _object({"N": _COUNT, "replicas": _NAMES | {"uniqueItems": True}}, closed=True),
        "SPEC's /rep body: the pool's size and hostnames, in join order.",
        closed=True,
    )
    | {
        "example": {
            "message": {"N": 3, "replicas": ["Server 1", "Server 2", "Server 3"]},
            "status": "successful",
        }
    },
    "Weight": _answer(
        _object(
            {
                "hostname": _STR,
                "weight": {"type": "integer", "minimum": 1, "maximum": MAX_WEIGHT},
            },
            closed=True,
        ),
        "The answer of PUT /lbproxy/weight.",
        closed=True,
    ),
    "Replica": _object(
        {
            "name": _STR,
            "ring_id": {"type": "integer", "minimum": 1},
            "state": {"type": "string", "enum": ["starting", "up", "down", "draining", "ejected"]},
            "since": {"type": "number", "description": "Unix time of the last state change."},
            "url": _STR,
            "backend_id": _STR
            | {
                "nullable": True,
                "description": "The pid (process backend) or container id (docker backend).",
            },
            "in_flight": _COUNT,
            "served": _COUNT,
            "incarnations": _COUNT,
            "ejections": _COUNT
            | {"description": "Times failed requests took it off the ring (passive checks)."},
        },
        required=[
            "name",
            "ring_id",
            "state",
            "since",
            "url",
            "backend_id",
            "in_flight",
            "served",
            "incarnations",
        ],
    ),
    "Status": _answer(
        _object(
            {
                "N": _COUNT,
                "family": _STR,
                "ring": _NAMES
                | {"description": "The replicas on the ring now (those that are up)."},
                "shares": {
                    "type": "object",
                    "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
                    "description": "The fraction of the key space each ring member owns.",
                },
                "replicas": {"type": "array", "items": _ref("Replica")},
                "replacements": _COUNT,
            }
        ),
        "Every replica's state, the ring and its shares.",
    ),
    "Event": _object(
        {
            "seq": {"type": "integer", "minimum": 1},
            "time": {"type": "number", "description": "Unix time (the balancer's clock)."},
            "kind": _STR
            | {
                "description": "launched, up, first_response, died, heartbeat_down, "
                "removed_from_ring, replacing, replace_failed, added, removed, stopped, adopted"
            },
            "replica": _STR,
            "detail": _STR,
        }
    ),
    "Events": _answer({"type": "array", "items": _ref("Event")}, "Pool events, oldest first."),
}


_BODIES = (ChangeRequest, AddRequest, WeightRequest)

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "lbproxy",
        "version": "0.1.0",
        "description": (
            "The balancer's own endpoints: /rep, /add, /rm and everything under /lbproxy/ "
            "(on the public port, or only on --admin-port when one is set). Every other "
            "path is forwarded to a replica chosen on the consistent-hash ring by the "
            "routing key (--key; by default the X-Request-ID header)."
        ),
    },
    "tags": [
        {"name": "pool", "description": "SPEC Task 3: view, grow and shrink the pool."},
        {"name": "operator", "description": "Status, events and this document."},
    ],
    "paths": _paths(OPERATIONS + VIEW_OPERATIONS),
    "components": {
        "schemas": _RESPONSES | {model.__name__: schema(model) for model in _BODIES},
        "securitySchemes": {
            "adminToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "The balancer's --admin-token; /add, /rm and PUT "
                "/lbproxy/weight need it when one is set.",
            }
        },
    },
}


async def openapi_handler(request: web.Request) -> web.Response:
    """``GET /lbproxy/openapi.json``: the document above, as JSON."""
    return web.json_response(OPENAPI)


def register(app: web.Application) -> None:
    """Serve the document at ``GET /lbproxy/openapi.json``.

    An exact path outranks the proxy's catch-all route whatever the order they were added
    in, so this may run after the catch-all is registered (but before the app starts).
    """
    app.router.add_get(OPENAPI_PATH, openapi_handler)


def document() -> dict[str, Any]:
    """A deep copy of the document, for callers that want to change it (tests, tools)."""
    return copy.deepcopy(OPENAPI)
