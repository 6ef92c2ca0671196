"""A trivial HTTP/1.1 keep-alive responder on raw asyncio, to measure the load client alone.

It answers every request with a fixed ``/home``-style body and does no parsing beyond
finding the end of each request head, so it costs far less per request than any real
server: what ``lbproxy loadtest`` reaches against it is the client's own ceiling.

    python docs/analysis/raw_responder.py 127.0.0.1 8901   # then
    lbproxy loadtest --url http://127.0.0.1:8901 --requests 50000 --concurrency 100 -q
"""

from __future__ import annotations

import asyncio
import sys

BODY = b'{"message": "Hello from Server: raw", "status": "successful"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


class Responder(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        heads = self.buffer.count(b"\r\n\r\n")  # GETs only: no request bodies
        if heads:
            self.buffer = self.buffer[self.buffer.rfind(b"\r\n\r\n") + 4 :]
            self.transport.write(RESPONSE * heads)


async def main(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Responder, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main(sys.argv[1], int(sys.argv[2])))
    except ImportError:
        asyncio.run(main(sys.argv[1], int(sys.argv[2])))
