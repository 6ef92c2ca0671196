"""The byte tunnel after ``101 Switching Protocols`` (WebSocket and other upgrades).

HAProxy, NGINX, Envoy and Traefik all relay an upgraded connection as opaque bytes both
ways; so does this. The tunnel belongs to the exchange of the upgrade request, which stays
at the head of its client's queue until the tunnel ends, so the machinery that exchange
already has still applies: it is counted in flight (drain and ``--bounded-load`` see it,
``/rm`` waits for it within its bound), flow control pauses whichever side reads faster
than the other writes, and the sweep closes it after ``--idle-timeout`` seconds without a
byte either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lbproxy.frontend.relay import Exchange
    from lbproxy.frontend.upstream import UpstreamConnection


class Tunnel:
    """Relays raw bytes between one client connection and one upstream connection."""

    __slots__ = ("bytes_down", "bytes_up", "conn", "exchange")

    def __init__(self, exchange: Exchange, conn: UpstreamConnection) -> None:
        self.exchange = exchange
        self.conn = conn
        self.bytes_up = 0
        self.bytes_down = 0

    def from_client(self, data: bytes) -> None:
        exchange = self.exchange
        exchange.last_activity = exchange.front.time()
        self.bytes_up += len(data)
        self.conn.write(data)

    def from_upstream(self, data: bytes) -> None:
        exchange = self.exchange
        exchange.last_activity = exchange.front.time()
        self.bytes_down += len(data)
        exchange.client.write(data)
