"""The replica's routes, exactly as SPEC Task 1 fixes them.

``/home`` names the replica so a client (and the analysis) can tell who served it;
``/heartbeat`` is an empty 200 the balancer polls to decide whether the replica lives;
``/ws`` is a WebSocket echo for trying upgrades through the balancer.
"""

from __future__ import annotations

from aiohttp import WSMsgType, web

from server_app.work import Work

SERVER_ID = web.AppKey("server_id", str)
WORK = web.AppKey("work", Work)


async def home(request: web.Request) -> web.Response:
    server_id = request.app[SERVER_ID]
    work = request.app[WORK]
    if work.active:  # SERVER_DELAY_MS / SERVER_CPU_MS / SERVER_CONCURRENCY (server_app/work.py)
        await work.perform()
    return web.json_response({"message": f"Hello from Server: {server_id}", "status": "successful"})


async def heartbeat(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ws_echo(request: web.Request) -> web.WebSocketResponse:
    """``GET /ws``: a WebSocket that echoes each text (and binary) message, so upgrades
    through the balancer can be tried with the stock replica (SPEC)."""
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def create_app(server_id: str, work: Work | None = None) -> web.Application:
    """The replica application for ``server_id`` (the name the balancer gave it).

    ``work`` (default: from the environment, off unless set) gives ``/home`` a service time.
    """
    app = web.Application()
    app[SERVER_ID] = server_id
    app[WORK] = work if work is not None else Work.from_env()
    app.router.add_get("/home", home)
    app.router.add_get("/heartbeat", heartbeat)
    app.router.add_get("/ws", ws_echo)
    return app
