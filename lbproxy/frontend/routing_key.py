"""Where a request's routing key comes from (``--key``): a header, a query parameter, a
cookie, the client's address or the path.

HAProxy (``balance hdr(NAME)``, ``url_param``, ``source``, ``uri``), NGINX (``hash $arg_id``,
``$cookie_NAME``, ``$remote_addr``) and Envoy (``hash_policy``) all let the operator choose
the hash key; this module is that choice, kept pure (bytes in, a string or ``None`` out) so it
can be tested without sockets and the relay calls it in one line.

``None`` means the chosen source is absent (no such header, parameter or cookie, or an empty
value): the relay then routes by the request id, which is the client's ``X-Request-ID`` or
else SPEC's random 6-digit id, sent on to the replica and back to the client, as with the
default key. The default source, ``header:X-Request-ID``, is exactly that request id, so it
always answers ``None`` and costs one call on the hot path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import unquote_to_bytes

__all__ = ["DEFAULT_KEY", "KEY_HELP", "KeySource", "PeerInfo", "parse_key"]

DEFAULT_KEY = "header:X-Request-ID"
KEY_HELP = "header:NAME, query:NAME, cookie:NAME, client-ip or path"

Kind = Literal["header", "query", "cookie", "client-ip", "path"]

#: RFC 9110 5.1 field-name token characters.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: Query-parameter and cookie names: printable ASCII, no separators that would split them.
_PARAM = re.compile(r"^[^\s=&;,\"]+$")


class PeerInfo(Protocol):
    """What the relay's client transport offers (``asyncio.Transport.get_extra_info``)."""

    def get_extra_info(self, name: str, default: object = None) -> object: ...


@dataclass(frozen=True, slots=True)
class KeySource:
    """A parsed ``--key`` value; ``extract`` reads the key of one request."""

    kind: Kind
    #: The header, parameter or cookie name (header names lower-cased); "" otherwise.
    name: str = ""

    @property
    def is_request_id(self) -> bool:
        """True for ``header:X-Request-ID``: the key is the request id the relay tracks."""
        return self.kind == "header" and self.name == "x-request-id"

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else self.kind

    def extract(
        self,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        transport: PeerInfo | None,
    ) -> str | None:
        """The key of a request (its raw target, its headers, its client transport), or
        ``None`` when the source is absent or empty."""
        kind = self.kind
        if kind == "header":
            if self.is_request_id:
                return None  # the relay keeps X-Request-ID itself (it is never in headers)
            return _header(headers, self.name.encode("latin-1"))
        if kind == "path":
            q = url.find(b"?")
            path = url if q < 0 else url[:q]
            return path.decode("latin-1") or None
        if kind == "query":
            return _query(url, self.name.encode("latin-1"))
        if kind == "cookie":
            return _cookie(headers, self.name.encode("latin-1"))
        # client-ip: the address of the TCP peer, never a client-supplied header (which
        # anyone could forge to pick a replica).
        if transport is None:
            return None
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
            return peer[0]
        return None


def _header(headers: list[tuple[bytes, bytes]], lname: bytes) -> str | None:
    for name, value in headers:
        if name.lower() == lname:
            value = value.strip()
            return value.decode("latin-1") if value else None
    return None


def _query(url: bytes, name: bytes) -> str | None:
    q = url.find(b"?")
    if q < 0:
        return None
    end = url.find(b"#", q)
    query = url[q + 1 :] if end < 0 else url[q + 1 : end]
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if _unquote(key) == name:
            text = _unquote(value)
            return text.decode("latin-1") if text else None
    return None


def _cookie(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    # RFC 6265 5.4: "name=value" pairs separated by "; "; a client may send several
    # Cookie fields (HTTP/2 splits them), so every one is searched in order.
    for hname, hvalue in headers:
        if hname.lower() != b"cookie":
            continue
        for pair in hvalue.split(b";"):
            key, sep, value = pair.strip().partition(b"=")
            if sep and key == name:
                value = value.strip()
                if len(value) >= 2 and value[:1] == value[-1:] == b'"':
                    value = value[1:-1]
                return value.decode("latin-1") if value else None
    return None


def _unquote(raw: bytes) -> bytes:
    """application/x-www-form-urlencoded decoding: '+' is a space, %XX a byte."""
    if b"%" not in raw and b"+" not in raw:
        return raw
    return unquote_to_bytes(raw.replace(b"+", b" "))


def parse_key(text: str) -> KeySource:
    """A ``--key`` value as a ``KeySource``; ``ValueError`` with one sentence otherwise."""
    raw = text.strip()
    if raw in ("client-ip", "path"):
        return KeySource(raw)  # type: ignore[arg-type]
    kind, sep, name = raw.partition(":")
    if kind in ("header", "query", "cookie") and sep:
        if not name:
            raise ValueError(f"{text!r} names no {kind}; write {kind}:NAME")
        if kind == "header":
            if not _TOKEN.match(name):
                raise ValueError(f"{text!r}: {name!r} is not a valid HTTP header name")
            return KeySource("header", name.lower())
        if not _PARAM.match(name) or not name.isascii():
            raise ValueError(
                f"{text!r}: {name!r} is not a usable {kind} name (printable ASCII "
                "without spaces, '=', '&', ';', ',' or quotes)"
            )
        return KeySource(kind, name)  # type: ignore[arg-type]
    raise ValueError(f"{text!r} is not a key source; choose one of {KEY_HELP}")
