"""frontend/framing.py rule by rule (RFC 9110 / RFC 9112), exhaustively where finite."""

from __future__ import annotations

import itertools

import pytest

from lbproxy.frontend import framing
from lbproxy.frontend.framing import Out

pytestmark = pytest.mark.unit

METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"PROPFIND"]
STATUSES = [100, 101, 102, 103, 199, 200, 201, 204, 206, 301, 304, 400, 404, 500, 599]


def test_connection_tokens_union_of_every_field() -> None:
    tokens = framing.connection_tokens(b"keep-alive, X-One")
    tokens = framing.connection_tokens(b" ,X-Two ,, ", tokens)
    assert tokens == {b"keep-alive", b"x-one", b"x-two"}
    assert framing.connection_tokens(b"") == frozenset()


@pytest.mark.parametrize(
    ("value", "bad"),
    [
        (b"close", None),
        (b"keep-alive, Content-Length", b"content-length"),
        (b"Transfer-Encoding", b"transfer-encoding"),
        (b"HOST", b"host"),
        (b"upgrade, x-foo", None),
    ],
)
def test_protected_tokens(value: bytes, bad: bytes | None) -> None:
    assert framing.protected_token(framing.connection_tokens(value)) == bad


def test_hop_by_hop() -> None:
    for name in framing.HOP_BY_HOP:
        assert framing.is_hop_by_hop(name, frozenset())
    assert not framing.is_hop_by_hop(b"x-custom", frozenset())
    assert framing.is_hop_by_hop(b"x-custom", frozenset({b"x-custom"}))
    assert not framing.is_hop_by_hop(b"content-length", frozenset())


@pytest.mark.parametrize(
    ("fields", "codings", "chunked", "outer"),
    [
        ([b"chunked"], (b"chunked",), True, b""),
        ([b"gzip, chunked"], (b"gzip", b"chunked"), True, b"gzip"),
        ([b"gzip", b"Chunked"], (b"gzip", b"chunked"), True, b"gzip"),
        ([b"chunked, gzip"], (b"chunked", b"gzip"), False, b"chunked, gzip"),
        ([b"deflate;q=1 , br, chunked"], (b"deflate", b"br", b"chunked"), True, b"deflate, br"),
        ([b""], (), False, b""),
    ],
)
def test_transfer_codings(
    fields: list[bytes], codings: tuple[bytes, ...], chunked: bool, outer: bytes
) -> None:
    got: tuple[bytes, ...] = ()
    for f in fields:
        got = framing.transfer_codings(f, got)
    assert got == codings
    assert framing.is_chunked(got) is chunked
    assert framing.outer_codings(got) == outer
    line = framing.chunked_field(got)
    assert line.endswith(b"chunked\r\n") and line.count(b"chunked") == (1 + (b"chunked" in outer))


@pytest.mark.parametrize(("method", "status"), list(itertools.product(METHODS, STATUSES)))
def test_bodiless_and_framing_choice_every_pair(method: bytes, status: int) -> None:
    expect_bodiless = (
        status < 200
        or status in (204, 304)
        or method == b"HEAD"
        or (method == b"CONNECT" and 200 <= status < 300)
    )
    assert framing.bodiless(method, status) is expect_bodiless
    for has_length, http11 in itertools.product((True, False), (True, False)):
        out = framing.response_framing(method, status, has_length, http11)
        if expect_bodiless:
            assert out is Out.NONE
        elif has_length:
            assert out is Out.LENGTH
        else:
            assert out is (Out.CHUNKED if http11 else Out.CLOSE)


@pytest.mark.parametrize("status", range(100, 200))
def test_interims_forwarded_to_http11_only_and_never_100_or_101(status: int) -> None:
    assert framing.forward_interim(status, False) is False
    assert framing.forward_interim(status, True) is (status >= 102)


@pytest.mark.parametrize("status", STATUSES)
def test_content_length_kept_except_on_1xx_and_204(status: int) -> None:
    assert framing.keep_framing_field(b"content-length", status) is not (
        status < 200 or status == 204
    )


def test_reason_phrases() -> None:
    assert framing.reason(501) == b"Not Implemented"
    assert framing.reason(103) == b"Early Hints"
    assert framing.reason(299) == b"Success"
    assert framing.reason(799) == b"Unknown"
    assert framing.status_line(404) == b"HTTP/1.1 404 Not Found\r\n"
    assert framing.status_line(200, b"Fine") == b"HTTP/1.1 200 Fine\r\n"


def test_header_block_drops_hop_by_hop_and_named_fields() -> None:
    headers = [(b"Link", b"</a>"), (b"Keep-Alive", b"5"), (b"X-Drop", b"1"), (b"X-Keep", b"2")]
    assert framing.header_block(headers, frozenset({b"x-drop"})) == [
        b"Link: </a>\r\n",
        b"X-Keep: 2\r\n",
    ]


@pytest.mark.parametrize(
    ("value", "h2c"),
    [
        (b"h2c", True),
        (b"H2C", True),
        (b"websocket", False),
        (b"h2c, websocket", False),
        (b"websocket/13", False),
    ],
)
def test_upgrade_offers(value: bytes, h2c: bool) -> None:
    assert framing.only_h2c(framing.upgrade_protocols(value)) is h2c
