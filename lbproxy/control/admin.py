"""The operator API: /rep, /add, /rm in SPEC's exact format, plus a status view.

Parsing and validation live here; every failure becomes SPEC's JSON failure body in
``_guard``, so no bad input reaches the reconciler and nothing half-changes the pool.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from lbproxy.control.api import AddRequest, ChangeRequest, Operation, WeightRequest, parse
from lbproxy.control.pool import Pool
from lbproxy.control.reconcile import Reconciler
from lbproxy.errors import RETRY_AFTER, BadRequest, LbproxyError, Unauthorized, failure_body

#: Bodies of admin calls are tiny; anything bigger is a mistake or an attack.
MAX_ADMIN_BODY = 64 * 1024

T = TypeVar("T")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ADD_TOO_MANY = "<Error> Length of hostname list is more than newly added instances"
RM_TOO_MANY = "<Error> Length of hostname list is more than removable instances"


def rep_body(pool: Pool) -> dict[str, Any]:
    """SPEC's /rep body: N and the replica hostnames, in join order."""
    names = pool.names()
    return {"message": {"N": len(names), "replicas": names}, "status": "successful"}


def _guard(handler: Handler, token: str | None = None) -> Handler:
    """SPEC's failure body for every error; with ``token``, a bearer token is required."""
    expected = f"Bearer {token}".encode() if token else None

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            if expected is not None:
                given = request.headers.get("Authorization", "").encode()
                # compare_digest: the time taken does not reveal how much of a guess matched
                if not hmac.compare_digest(given, expected):
                    raise Unauthorized(
                        "this endpoint needs the header 'Authorization: Bearer <token>' "
                        "with the balancer's admin token (LBPROXY_ADMIN_TOKEN)"
                    )
            return await handler(request)
        except LbproxyError as exc:
            response = web.json_response(failure_body(exc.message), status=exc.status)
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="lbproxy"'
            elif exc.status == 503 and exc.retry_after is not None:
                response.headers["Retry-After"] = str(exc.retry_after)  # RFC 9110 15.6.4
            return response

    return wrapped


async def _read_json(request: web.Request) -> Any:
    """The request's JSON body (bounded); BadRequest when it is not JSON."""
    if request.content_length is not None and request.content_length > MAX_ADMIN_BODY:
        raise BadRequest(f"request body too large (limit {MAX_ADMIN_BODY} bytes)", status=413)
    raw = await request.content.read(MAX_ADMIN_BODY + 1)
    if len(raw) > MAX_ADMIN_BODY:
        raise BadRequest(f"request body too large (limit {MAX_ADMIN_BODY} bytes)", status=413)
    try:
        return json.loads(raw or b"null")
    except RecursionError as exc:  # "[[[[..." nested deeper than the parser's stack
        raise BadRequest("body is nested too deeply to be a request body") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON ({exc})") from exc


async def _read_body(request: web.Request, model: type[T]) -> T:
    """The request's body as ``model`` (api.py): every bad input a BadRequest sentence."""
    return parse(model, await _read_json(request))


def answer_wrong_methods(app: web.Application) -> None:
    """405 with ``Allow`` for a known path asked with a method it does not serve.

    RFC 9110 15.5.6: the origin server MUST send an ``Allow`` field listing the path's
    methods. Call after every route is registered and before the catch-all route; without
    this, ``POST /rep`` fell through to the catch-all and read "not an endpoint" (404).
    """
    for resource in list(app.router.resources()):
        if not isinstance(resource, web.Resource):
            continue
        methods = sorted({route.method for route in resource if route.method != "*"})
        if not methods:
            continue
        allow = ", ".join(methods)
        path = resource.canonical

        async def wrong_method(
            request: web.Request, allow: str = allow, path: str = path
        ) -> web.Response:
            response = web.json_response(
                failure_body(f"method {request.method} is not allowed on '{path}'; use {allow}"),
                status=405,
            )
            response.headers["Allow"] = allow
            return response

        resource.add_route("*", wrong_method)


class AdminRoutes:
    """Handlers bound to one pool and reconciler."""

    def __init__(self, pool: Pool, reconciler: Reconciler, token: str | None = None) -> None:
        self._pool = pool
        self._reconciler = reconciler
        self._token = token or None

    async def rep(self, request: web.Request) -> web.Response:
        return web.json_response(rep_body(self._pool))

    async def add(self, request: web.Request) -> web.Response:
        body = await _read_body(request, AddRequest)
        if len(body.hostnames) > body.n:  # SPEC's check first: its exact message
            return web.json_response({"message": ADD_TOO_MANY, "status": "failure"}, status=400)
        weight = self._pool.check_weight(body.weight)  # the family may not take weights
        await self._reconciler.add(body.n, list(body.hostnames), weight)
        return web.json_response(rep_body(self._pool))

    async def rm(self, request: web.Request) -> web.Response:
        body = await _read_body(request, ChangeRequest)
        if len(body.hostnames) > body.n:
            return web.json_response({"message": RM_TOO_MANY, "status": "failure"}, status=400)
        await self._reconciler.remove(body.n, list(body.hostnames))
        return web.json_response(rep_body(self._pool))

    async def weight(self, request: web.Request) -> web.Response:
        """Answers once the ring with the new weight is in use (it is built off the loop).

        Through the reconciler: on Swarm the weight is written to the engine first."""
        body = await _read_body(request, WeightRequest)
        weight = self._pool.check_weight(body.weight)
        replica = await self._reconciler.set_weight(body.hostname, weight)
        await self._pool.settled()
        return web.json_response(
            {
                "message": {"hostname": body.hostname, "weight": replica.weight},
                "status": "successful",
            }
        )

    async def status(self, request: web.Request) -> web.Response:
        pool = self._pool
        return web.json_response(
            {
                "message": {
                    "N": len(pool),
                    "family": pool.family.name,
                    "ring": sorted(pool.ring.names),
                    "shares": pool.ring.shares(),
                    "replicas": [r.as_dict() for r in pool.replicas()],
                    "replacements": self._reconciler.replacements,
                },
                "status": "successful",
            }
        )

    async def events(self, request: web.Request) -> web.Response:
        raw = request.query.get("since", "0")
        if not (raw.isascii() and raw.isdigit()):
            raise BadRequest('"since" must be a non-negative integer event sequence number')
        since = int(raw)
        return web.json_response(
            {
                "message": [e.as_dict() for e in self._pool.events.since(since)],
                "status": "successful",
            }
        )

    def register(self, app: web.Application) -> None:
        """Route every operation in ``OPERATIONS``; the mutating ones need the token."""
        for op in OPERATIONS:
            assert op.handler is not None
            handler = _guard(getattr(self, op.handler), self._token if op.token else None)
            app.router.add_route(op.method, op.path, handler)
            if op.method == "GET":
                app.router.add_route("HEAD", op.path, handler)


_CHANGE_ERRORS = (
    (404, "A named hostname is not in the pool (/rm)."),
    (
        409,
        "A named hostname is already in the pool, the ring cannot place it, or the backend "
        "already runs something under that name (/add).",
    ),
    (502, "The replica backend (process spawner, Docker engine) failed."),
    (
        503,
        "The backend is unreachable (retry after `Retry-After` seconds), or the balancer "
        "is shutting down (no `Retry-After`: it does not come back).",
    ),
)
#: The 503's header (RFC 9110 10.2.3); absent while the balancer shuts down.
_CHANGE_HEADERS = ((503, "Retry-After", str(RETRY_AFTER)),)

_BAD_CHANGE = (
    "Malformed or out-of-range input: not a JSON object, unknown field, `n` not an integer "
    "in range, `hostnames` not a list of strings, more hostnames than `n` (SPEC: `<Error> "
    "Length of hostname list is more than {verb} instances`), a name the backend cannot "
    "run, duplicate names{tail}"
)

#: The admin API: routed by ``AdminRoutes.register``, documented by views/openapi.py.
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET",
        "/rep",
        "listReplicas",
        "The pool's replicas",
        handler="rep",
        tag="pool",
        ok=("Replicas", "N and the replica hostnames."),
    ),
    Operation(
        "POST",
        "/add",
        "addReplicas",
        "Add n replicas",
        handler="add",
        tag="pool",
        description="Launch `n` replicas: the named ones first, generated names for the rest. "
        "All of them join the ring together once they pass their heartbeats, or none does "
        "(a failed launch stops what was started).",
        body=AddRequest,
        ok=("Replicas", "The pool after the change (the same body as /rep)."),
        errors=(
            (
                400,
                _BAD_CHANGE.format(
                    verb="newly added",
                    tail=", a weight the ring family "
                    "does not take, or a pool that would exceed its size limit.",
                ),
            ),
            *_CHANGE_ERRORS,
        ),
        error_headers=_CHANGE_HEADERS,
        token=True,
    ),
    Operation(
        "DELETE",
        "/rm",
        "removeReplicas",
        "Remove n replicas",
        handler="rm",
        tag="pool",
        description="Remove `n` replicas: the named ones first, then others picked to make "
        "up `n` (failed replicas first, then the most recently joined). Each is taken off "
        "the ring, drained and stopped.",
        body=ChangeRequest,
        ok=("Replicas", "The pool after the change (the same body as /rep)."),
        errors=(
            (400, _BAD_CHANGE.format(verb="removable", tail=", or `n` larger than the pool.")),
            *_CHANGE_ERRORS,
        ),
        error_headers=_CHANGE_HEADERS,
        token=True,
    ),
    Operation(
        "GET",
        "/lbproxy/status",
        "status",
        "Every replica's state, the ring and its shares",
        handler="status",
        ok=("Status", "The balancer's view of its pool."),
    ),
    Operation(
        "GET",
        "/lbproxy/events",
        "events",
        "The pool's recent events (a bounded log)",
        handler="events",
        query=(
            {
                "name": "since",
                "in": "query",
                "required": False,
                "description": "Only events with a sequence number above this one.",
                "schema": {"type": "integer", "default": 0, "minimum": 0},
            },
        ),
        ok=("Events", "The events after `since`, oldest first."),
        errors=((400, "`since` is not a non-negative integer."),),
    ),
    Operation(
        "PUT",
        "/lbproxy/weight",
        "setWeight",
        "Change one replica's weight",
        handler="weight",
        tag="pool",
        description="Set a replica's share of the keys relative to the others (1-100, "
        "default 1); keys move only to or from it. Answers once the rebuilt ring is in use.",
        body=WeightRequest,
        ok=("Weight", "The replica's name and its weight now."),
        errors=(
            (
                400,
                "Malformed input, a weight out of 1..100, or a ring family that does not "
                "take weights (the seed families).",
            ),
            (404, "The hostname is not in the pool."),
        ),
        token=True,
    ),
)
