"""Forwarded headers: who the client was, which scheme and host it asked for.

Traefik's default, and what HAProxy's ``option forwardfor`` / NGINX's
``proxy_add_x_forwarded_for`` give: ``X-Forwarded-For``, ``X-Forwarded-Proto``,
``X-Forwarded-Host`` and RFC 7239 ``Forwarded`` on every request. A client could send its
own to pose as someone else, so the ones a client sends are dropped and replaced, unless
the peer is a trusted proxy (``--trusted-proxies CIDR,...``): then its chain is kept and
this hop appended. Pure code: the relay decides trust once per connection and calls
``lines`` once per request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The fields this module owns (lower-case); the relay drops client copies when untrusted.
NAMES = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"})


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """``10.0.0.0/8,192.168.1.7`` as networks; ValueError naming the bad entry."""
    nets: list[IPNetwork] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or CIDR network") from None
    return tuple(nets)


def is_trusted(peer: str | None, networks: Sequence[IPNetwork]) -> bool:
    if not peer or not networks:
        return False
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


def _node(peer: str) -> bytes:
    """RFC 7239 6: an IPv6 node is quoted and bracketed; an unknown one is ``unknown``."""
    if not peer:
        return b"unknown"
    if ":" in peer:
        return b'"[' + peer.encode() + b']"'
    return peer.encode()


def _quote(value: bytes) -> bytes:
    """RFC 7239 4: a value that is not a token goes in a quoted-string."""
    if value and all(c in _TOKEN for c in value):
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def lines(
    peer: str,
    proto: bytes,
    host: bytes,
    received: Iterable[tuple[bytes, bytes]] = (),
) -> list[bytes]:
    """The forwarded field lines for one request.

    ``received`` are the client's own forwarded fields (lower-case name, value): only
    passed for a trusted peer, whose chain is extended; otherwise they were dropped.
    """
    prior: dict[bytes, list[bytes]] = {}
    for name, value in received:
        prior.setdefault(name, []).append(value.strip())
    ip = peer.encode()
    xff = b", ".join([*prior.get(b"x-forwarded-for", []), ip or b"unknown"])
    proto_out = (prior.get(b"x-forwarded-proto") or [proto])[0]
    host_out = (prior.get(b"x-forwarded-host") or [host])[0]
    element = b"for=" + _node(peer) + b";proto=" + proto
    if host:
        element += b";host=" + _quote(host)
    fwd = b", ".join([*prior.get(b"forwarded", []), element])
    out = [b"X-Forwarded-For: " + xff + b"\r\n", b"X-Forwarded-Proto: " + proto_out + b"\r\n"]
    if host_out:
        out.append(b"X-Forwarded-Host: " + host_out + b"\r\n")
    out.append(b"Forwarded: " + fwd + b"\r\n")
    return out
