"""The operator API: /rep, /add, /rm in SPEC's exact format, plus a status view.

Parsing and validation live here; every failure becomes SPEC's JSON failure body in
``_guard``, so no bad input reaches the reconciler and nothing half-changes the pool.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from lbproxy.config import MAX_CHANGE_PER_CALL
from lbproxy.control.pool import Pool
from lbproxy.control.reconcile import Reconciler
from lbproxy.errors import BadRequest, LbproxyError, Unauthorized, failure_body

#: Bodies of admin calls are tiny; anything bigger is a mistake or an attack.
MAX_ADMIN_BODY = 64 * 1024

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
    except RecursionError as exc:
        raise BadRequest("body is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON ({exc})") from exc


async def _read_change(
    request: web.Request, extra: frozenset[str] = frozenset()
) -> tuple[int, list[str], dict[str, Any]]:
    """Parse ``{"n": int, "hostnames": [str, ...]}`` strictly; BadRequest on anything else.

    ``extra``: optional fields this call also accepts (``weight`` on /add), returned as is.
    """
    if request.content_length is not None and request.content_length > MAX_ADMIN_BODY:
        raise BadRequest(f"request body too large (limit {MAX_ADMIN_BODY} bytes)", status=413)
    raw = await request.content.read(MAX_ADMIN_BODY + 1)
    if len(raw) > MAX_ADMIN_BODY:
        raise BadRequest(f"request body too large (limit {MAX_ADMIN_BODY} bytes)", status=413)
    try:
        payload = json.loads(raw or b"null")
    except RecursionError as exc:  # "[[[[..." nested deeper than the parser's stack
        raise BadRequest("body is nested too deeply to be a change request") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(
            f'body is not valid JSON ({exc}); send {{"n": 2, "hostnames": []}}'
        ) from exc
    if not isinstance(payload, dict):
        raise BadRequest('body must be a JSON object such as {"n": 2, "hostnames": ["S5"]}')
    unknown = set(payload) - {"n", "hostnames"} - extra
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}; expected n, hostnames")
    if "n" not in payload:
        raise BadRequest('missing field "n" (the number of replicas)')
    n = payload["n"]
    if isinstance(n, bool) or not isinstance(n, int):
        raise BadRequest(f'"n" must be an integer, got {json.dumps(n)}')
    if n < 0:
        raise BadRequest(f'"n" must not be negative, got {n}')
    if n > MAX_CHANGE_PER_CALL:
        raise BadRequest(f'"n" must be at most {MAX_CHANGE_PER_CALL} per call, got {n}')
    hostnames = payload.get("hostnames", [])
    if hostnames is None:
        hostnames = []
    if not isinstance(hostnames, list) or not all(isinstance(h, str) for h in hostnames):
        raise BadRequest('"hostnames" must be a list of strings')
    return n, hostnames, {k: payload[k] for k in extra if k in payload}


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
        n, hostnames, extra = await _read_change(request, frozenset({"weight"}))
        if len(hostnames) > n:  # SPEC's check first: its exact message
            return web.json_response({"message": ADD_TOO_MANY, "status": "failure"}, status=400)
        weight = self._pool.check_weight(extra.get("weight", 1))
        await self._reconciler.add(n, hostnames, weight)
        return web.json_response(rep_body(self._pool))

    async def rm(self, request: web.Request) -> web.Response:
        n, hostnames, _ = await _read_change(request)
        if len(hostnames) > n:
            return web.json_response({"message": RM_TOO_MANY, "status": "failure"}, status=400)
        await self._reconciler.remove(n, hostnames)
        return web.json_response(rep_body(self._pool))

    async def weight(self, request: web.Request) -> web.Response:
        """``PUT /lbproxy/weight {"hostname": "S5", "weight": 3}``: answers once the ring
        with the new weight is in use (it is built off the loop)."""
        payload = await _read_json(request)
        if not isinstance(payload, dict) or set(payload) != {"hostname", "weight"}:
            raise BadRequest('body must be {"hostname": "<name>", "weight": <1..100>}')
        name = payload["hostname"]
        if not isinstance(name, str):
            raise BadRequest('"hostname" must be a string')
        replica = self._pool.set_weight(name, self._pool.check_weight(payload["weight"]))
        await self._pool.settled()
        return web.json_response(
            {"message": {"hostname": name, "weight": replica.weight}, "status": "successful"}
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
        app.router.add_get("/rep", _guard(self.rep))
        app.router.add_post("/add", _guard(self.add, self._token))
        app.router.add_delete("/rm", _guard(self.rm, self._token))
        app.router.add_get("/lbproxy/status", _guard(self.status))
        app.router.add_get("/lbproxy/events", _guard(self.events))
        app.router.add_put("/lbproxy/weight", _guard(self.weight, self._token))
