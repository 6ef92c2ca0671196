"""The replica's routes, exactly as SPEC Task 1 fixes them.

``/home`` names the replica so a client (and the analysis) can tell who served it;
``/heartbeat`` is an empty 200 the balancer polls to decide whether the replica lives.
"""

from __future__ import annotations

from aiohttp import web

SERVER_ID = web.AppKey("server_id", str)


async def home(request: web.Request) -> web.Response:
    server_id = request.app[SERVER_ID]
    return web.json_response({"message": f"Hello from Server: {server_id}", "status": "successful"})


async def heartbeat(request: web.Request) -> web.Response:
    return web.Response(status=200)


def create_app(server_id: str) -> web.Application:
    """The replica application for ``server_id`` (the name the balancer gave it)."""
    app = web.Application()
    app[SERVER_ID] = server_id
    app.router.add_get("/home", home)
    app.router.add_get("/heartbeat", heartbeat)
    return app
