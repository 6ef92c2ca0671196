"""The OpenAPI 3.0 document of the balancer's own endpoints, served at /lbproxy/openapi.json.

It describes what the balancer answers itself (SPEC's /rep, /add, /rm and the operator
views under /lbproxy/); every other path is proxied to the replicas and is theirs to
document. The schemas are exact where SPEC is exact (the /rep body, the failure body) so
that a fuzzer (tests/test_fuzz_admin.py runs schemathesis against it) can hold the
balancer to them. OpenAPI 3.0.3 rather than 3.1: the widest tool support.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from lbproxy.config import MAX_CHANGE_PER_CALL

__all__ = ["OPENAPI", "OPENAPI_PATH", "document", "openapi_handler", "register"]

OPENAPI_PATH = "/lbproxy/openapi.json"

_JSON = "application/json"
# lbproxy.control.admin.MAX_ADMIN_BODY (not imported: admin is not ours)
_MAX_ADMIN_BODY = 64 * 1024


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _failure(description: str) -> dict[str, Any]:
    return _json(_ref("Failure"), description)


_CHANGE_EXAMPLES = {
    "add": {"n": 4, "hostnames": ["S5", "S4", "S10", "S11"]},
    "rm": {"n": 3, "hostnames": ["S5", "S4"]},
}


def _change_operation(kind: str) -> dict[str, Any]:
    add = kind == "add"
    verb = "added" if add else "removable"
    return {
        "operationId": "addReplicas" if add else "removeReplicas",
        "tags": ["pool"],
        "summary": "Add n replicas" if add else "Remove n replicas",
        "description": (
            "Launch `n` replicas: the named ones first, generated names for the rest. "
            "All of them join the ring together once they pass their heartbeats, or none "
            "does (a failed launch stops what was started)."
            if add
            else "Remove `n` replicas: the named ones first, then others picked to make up "
            "`n` (failed replicas first, then the most recently joined). Each is taken "
            "off the ring, drained and stopped."
        ),
        "requestBody": {
            "required": True,
            "content": {
                _JSON: {
                    "schema": _ref("AddRequest" if add else "ChangeRequest"),
                    "example": _CHANGE_EXAMPLES[kind],
                }
            },
        },
        # Open unless the balancer runs with --admin-token (LBPROXY_ADMIN_TOKEN).
        "security": [{}, {"adminToken": []}],
        "responses": {
            "200": _json(_ref("Replicas"), "The pool after the change (the same body as /rep)."),
            "400": _failure(
                "Malformed or out-of-range input: not a JSON object, unknown field, `n` "
                f"not an integer in 0..{MAX_CHANGE_PER_CALL}, `hostnames` not a list of "
                "strings, more hostnames than `n` (SPEC: `<Error> Length of hostname list "
                f"is more than {verb} instances`), a name the backend cannot run, "
                "duplicate names"
                + (
                    ", or a pool that would exceed its size limit."
                    if add
                    else ", or `n` larger than the pool."
                )
            ),
            "401": {
                **_failure(
                    "The balancer has an admin token and the request did not carry it as "
                    "`Authorization: Bearer <token>`."
                ),
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
            },
            "404": _failure("A named hostname is not in the pool (/rm)."),
            "409": _failure(
                "A named hostname is already in the pool, the ring cannot place it, or "
                "the backend already runs something under that name (/add)."
            ),
            "413": _failure(f"The request body is larger than {_MAX_ADMIN_BODY} bytes."),
            "502": _failure("The replica backend (process spawner, Docker engine) failed."),
            "503": _failure("The backend is unreachable, or the balancer is shutting down."),
        },
    }


_REPLICA_STATES = ["starting", "up", "down", "draining", "ejected"]

_SCHEMAS: dict[str, Any] = {
    "Failure": {
        "type": "object",
        "description": "SPEC's failure body, for every error the balancer answers itself.",
        "required": ["message", "status"],
        "additionalProperties": False,
        "properties": {
            "message": {"type": "string", "pattern": "^<Error> "},
            "status": {"type": "string", "enum": ["failure"]},
        },
    },
    "Replicas": {
        "type": "object",
        "description": "SPEC's /rep body: the pool's size and hostnames, in join order.",
        "required": ["message", "status"],
        "additionalProperties": False,
        "properties": {
            "message": {
                "type": "object",
                "required": ["N", "replicas"],
                "additionalProperties": False,
                "properties": {
                    "N": {"type": "integer", "minimum": 0},
                    "replicas": {
                        "type": "array",
                        "items": {"type": "string"},
                        "uniqueItems": True,
                    },
                },
            },
            "status": {"type": "string", "enum": ["successful"]},
        },
        "example": {
            "message": {"N": 3, "replicas": ["Server 1", "Server 2", "Server 3"]},
            "status": "successful",
        },
    },
    "ChangeRequest": {
        "type": "object",
        "description": "The body of /add and /rm.",
        "required": ["n"],
        "additionalProperties": False,
        "properties": {
            "n": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_CHANGE_PER_CALL,
                "description": "How many replicas to add or remove in this call.",
            },
            "hostnames": {
                "type": "array",
                "nullable": True,
                "items": {"type": "string"},
                "description": (
                    "Names to use (/add) or remove (/rm) first; at most `n` (null or absent: "
                    "none). Names are 1-63 characters from letters, digits, '_', '.', "
                    "'-' starting with a letter or digit (the process backend also allows "
                    "inner spaces, as in 'Server 1'); a name the backend cannot run is a 400."
                ),
            },
        },
    },
    "AddRequest": {
        "type": "object",
        "description": "The body of /add: /rm's fields and an optional weight.",
        "required": ["n"],
        "additionalProperties": False,
        "properties": {
            "n": {"$ref": "#/components/schemas/ChangeRequest/properties/n"},
            "hostnames": {"$ref": "#/components/schemas/ChangeRequest/properties/hostnames"},
            "weight": {
                "type": "integer",
                "minimum": 1,
                "maximum": 100,
                "description": (
                    "Each new replica's share of the keys relative to weight-1 replicas "
                    "(default 1; maglev and hashring only: the seed families answer 400). "
                    "Change it later with PUT /lbproxy/weight."
                ),
            },
        },
    },
    "Replica": {
        "type": "object",
        "required": [
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
        "properties": {
            "name": {"type": "string"},
            "ring_id": {"type": "integer", "minimum": 1},
            "state": {"type": "string", "enum": _REPLICA_STATES},
            "since": {"type": "number", "description": "Unix time of the last state change."},
            "url": {"type": "string"},
            "backend_id": {
                "type": "string",
                "nullable": True,
                "description": "The pid (process backend) or container id (docker backend).",
            },
            "in_flight": {"type": "integer", "minimum": 0},
            "served": {"type": "integer", "minimum": 0},
            "incarnations": {"type": "integer", "minimum": 0},
            "ejections": {
                "type": "integer",
                "minimum": 0,
                "description": "Times failed requests took it off the ring (passive checks).",
            },
        },
    },
    "Status": {
        "type": "object",
        "required": ["message", "status"],
        "properties": {
            "message": {
                "type": "object",
                "required": ["N", "family", "ring", "shares", "replicas", "replacements"],
                "properties": {
                    "N": {"type": "integer", "minimum": 0},
                    "family": {"type": "string"},
                    "ring": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "The replicas on the ring now (those that are up).",
                    },
                    "shares": {
                        "type": "object",
                        "additionalProperties": {"type": "number", "minimum": 0, "maximum": 1},
                        "description": "The fraction of the key space each ring member owns.",
                    },
                    "replicas": {"type": "array", "items": _ref("Replica")},
                    "replacements": {"type": "integer", "minimum": 0},
                },
            },
            "status": {"type": "string", "enum": ["successful"]},
        },
    },
    "Event": {
        "type": "object",
        "required": ["seq", "time", "kind", "replica", "detail"],
        "properties": {
            "seq": {"type": "integer", "minimum": 1},
            "time": {"type": "number", "description": "Unix time (the balancer's clock)."},
            "kind": {
                "type": "string",
                "description": (
                    "launched, up, first_response, died, heartbeat_down, removed_from_ring, "
                    "replacing, replace_failed, added, removed, stopped, adopted"
                ),
            },
            "replica": {"type": "string"},
            "detail": {"type": "string"},
        },
    },
    "Events": {
        "type": "object",
        "required": ["message", "status"],
        "properties": {
            "message": {"type": "array", "items": _ref("Event")},
            "status": {"type": "string", "enum": ["successful"]},
        },
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "lbproxy",
        "version": "0.1.0",
        "description": (
            "The balancer's own endpoints: /rep, /add, /rm and everything under /lbproxy/ "
            "(on the public port, or only on --admin-port when one is set). Every other "
            "path is forwarded to a replica chosen on the consistent-hash ring by the "
            "X-Request-ID header."
        ),
    },
    "tags": [
        {"name": "pool", "description": "SPEC Task 3: view, grow and shrink the pool."},
        {"name": "operator", "description": "Status, events and this document."},
    ],
    "paths": {
        "/rep": {
            "get": {
                "operationId": "listReplicas",
                "tags": ["pool"],
                "summary": "The pool's replicas",
                "responses": {"200": _json(_ref("Replicas"), "N and the replica hostnames.")},
            }
        },
        "/add": {"post": _change_operation("add")},
        "/rm": {"delete": _change_operation("rm")},
        "/lbproxy/status": {
            "get": {
                "operationId": "status",
                "tags": ["operator"],
                "summary": "Every replica's state, the ring and its shares",
                "responses": {"200": _json(_ref("Status"), "The balancer's view of its pool.")},
            }
        },
        "/lbproxy/events": {
            "get": {
                "operationId": "events",
                "tags": ["operator"],
                "summary": "The pool's recent events (a bounded log)",
                "parameters": [
                    {
                        "name": "since",
                        "in": "query",
                        "required": False,
                        "description": "Only events with a sequence number above this one.",
                        "schema": {"type": "integer", "default": 0},
                    }
                ],
                "responses": {
                    "200": _json(_ref("Events"), "The events after `since`, oldest first."),
                    "400": _failure("`since` is not an integer."),
                },
            }
        },
        "/lbproxy/metrics": {
            "get": {
                "operationId": "metrics",
                "tags": ["operator"],
                "summary": "Prometheus metrics (text exposition format)",
                "responses": {
                    "200": {
                        "description": "Counters, gauges and histograms of the balancer.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        OPENAPI_PATH: {
            "get": {
                "operationId": "openapi",
                "tags": ["operator"],
                "summary": "This document",
                "responses": {
                    "200": _json({"type": "object"}, "The OpenAPI 3.0 document."),
                },
            }
        },
    },
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {
            "adminToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "The balancer's --admin-token; only /add and /rm need it.",
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
