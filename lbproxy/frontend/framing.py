"""HTTP/1.1 message framing as pure functions: what a message's body is, what to forward.

Why a module of its own: the relay's desyncs (issue 9) all came from framing decisions
scattered through I/O code: a Connection token that removed Content-Length, a 304 that got
a chunked terminator, a 1xx taken for the end of an exchange. Every such decision is here,
without I/O, so each rule is unit-tested on its own (tests/test_framing.py) and the relay
only asks. References: RFC 9110 (semantics), RFC 9112 (HTTP/1.1 message syntax).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from http import HTTPStatus

#: RFC 9110 7.6.1: fields that belong to one connection, never forwarded either way, plus
#: what this proxy sets itself (framing, its request id) or answers itself (Expect).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    }
)

#: Fields a Connection header may never remove (RFC 9110 7.6.1: a sender must not list
#: fields meant for the recipient's framing or routing). Honouring such a token is how a
#: body turns into a smuggled request; Host is the target. Such a request gets 400.
PROTECTED = frozenset({b"content-length", b"transfer-encoding", b"host"})

#: Longest X-Request-ID accepted: it is a ring key and is reflected on every answer.
MAX_REQUEST_ID = 200


def connection_tokens(value: bytes, into: frozenset[bytes] = frozenset()) -> frozenset[bytes]:
    """The option names of one Connection field, added to those of earlier fields.

    RFC 9110 7.6.1: every Connection field line counts, not only the last one.
    """
    tokens = {t.strip().lower() for t in value.split(b",")}
    tokens.discard(b"")
    return into | tokens if into else frozenset(tokens)


def protected_token(tokens: frozenset[bytes]) -> bytes | None:
    """A Connection token naming a field that must never be dropped, or None."""
    hit = tokens & PROTECTED
    return min(hit) if hit else None


def is_hop_by_hop(lname: bytes, tokens: frozenset[bytes]) -> bool:
    """Whether a (lower-cased) field is connection-specific and must not be forwarded."""
    return lname in HOP_BY_HOP or (bool(tokens) and lname in tokens)


def transfer_codings(value: bytes, into: tuple[bytes, ...] = ()) -> tuple[bytes, ...]:
    """The transfer codings a Transfer-Encoding field lists, in order (lower-cased)."""
    codings = tuple(c.strip().lower().split(b";", 1)[0].strip() for c in value.split(b","))
    return into + tuple(c for c in codings if c)


def is_chunked(codings: tuple[bytes, ...]) -> bool:
    """RFC 9112 6.3: a message is chunked only when chunked is the final coding."""
    return bool(codings) and codings[-1] == b"chunked"


def outer_codings(codings: tuple[bytes, ...]) -> bytes:
    """The codings below the final chunked one (``gzip`` of ``gzip, chunked``), to re-send
    when the proxy re-chunks a body the parser de-chunked; empty when there are none."""
    inner = codings[:-1] if is_chunked(codings) else codings
    return b", ".join(inner)


def chunked_field(codings: tuple[bytes, ...]) -> bytes:
    """The Transfer-Encoding line for a body the proxy re-chunks, keeping other codings."""
    outer = outer_codings(codings)
    if outer:
        return b"Transfer-Encoding: " + outer + b", chunked\r\n"
    return b"Transfer-Encoding: chunked\r\n"


def bodiless_status(status: int) -> bool:
    """RFC 9112 6.3: 1xx, 204 and 304 answers never have a body, whatever their fields."""
    return status < 200 or status == 204 or status == 304


def bodiless(method: bytes, status: int) -> bool:
    """Whether the answer to ``method`` with ``status`` has no body (RFC 9112 6.3)."""
    return (
        bodiless_status(status)
        or method == b"HEAD"
        or (method == b"CONNECT" and 200 <= status < 300)
    )


class Out(enum.Enum):
    """How the proxy frames a response body towards the client."""

    NONE = "none"  # bodiless: no body, no terminator
    LENGTH = "length"  # the upstream's Content-Length, bytes passed through
    CHUNKED = "chunked"  # re-chunked (the parser hands de-chunked data)
    CLOSE = "close"  # read-until-close towards the client: HTTP/1.0 without a length


def response_framing(method: bytes, status: int, has_length: bool, client_http11: bool) -> Out:
    """Choose the client-side framing of an answer.

    A length is kept; a chunked or close-delimited upstream body becomes chunked for
    HTTP/1.1 clients (so their connection survives it) and close-delimited for HTTP/1.0
    clients, which do not understand chunked (RFC 9112 7: chunked only to HTTP/1.1).
    """
    if bodiless(method, status):
        return Out.NONE
    if has_length:
        return Out.LENGTH
    return Out.CHUNKED if client_http11 else Out.CLOSE


def forward_interim(status: int, client_http11: bool) -> bool:
    """Whether an upstream 1xx goes on to the client (RFC 9110 15.2).

    A proxy MUST forward 1xx it did not ask for, but never to an HTTP/1.0 client. 100 is
    the exception: this proxy answers ``Expect: 100-continue`` itself (and does not forward
    Expect), so a replica's 100 is an answer to nothing the client sent through us; passing
    it on would give an expecting client two. 101 is the upgrade path, not an interim.
    """
    return client_http11 and 102 <= status < 200


def keep_framing_field(lname: bytes, status: int) -> bool:
    """Whether an upstream framing field (content-length) is forwarded for ``status``.

    RFC 9110 8.6: no Content-Length in 1xx or 204; a 304's or a HEAD answer's
    Content-Length is metadata (the size the full answer would have) and is kept.
    """
    return not (lname == b"content-length" and (status < 200 or status == 204))


def reason(status: int) -> bytes:
    """The standard reason phrase, or a generic one for the status class."""
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return _CLASS_REASON.get(status // 100, b"Unknown")


_CLASS_REASON = {
    1: b"Informational",
    2: b"Success",
    3: b"Redirection",
    4: b"Client Error",
    5: b"Server Error",
}


def status_line(status: int, phrase: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase or reason(status))


def header_block(headers: Iterable[tuple[bytes, bytes]], tokens: frozenset[bytes]) -> list[bytes]:
    """Forwardable field lines (end-to-end fields only), as ``name: value\\r\\n`` pieces."""
    out: list[bytes] = []
    for name, value in headers:
        if is_hop_by_hop(name.lower(), tokens):
            continue
        out.append(name + b": " + value + b"\r\n")
    return out


def upgrade_protocols(value: bytes) -> frozenset[bytes]:
    """The protocol names an Upgrade field offers, without versions (``websocket``, ``h2c``)."""
    return frozenset(p.strip().split(b"/", 1)[0].lower() for p in value.split(b",") if p.strip())


def only_h2c(protocols: frozenset[bytes]) -> bool:
    """An offer of h2c alone: a client trying HTTP/2 over cleartext, which a proxy that
    speaks HTTP/1.1 simply ignores (RFC 9110 7.8: a server MAY ignore an Upgrade)."""
    return protocols == frozenset({b"h2c"})
