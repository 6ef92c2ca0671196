"""``--key``: parsing, extraction per source, and the property that routing follows the key.

HAProxy's ``balance hdr()/url_param/source/uri`` and NGINX's ``hash $arg_/$cookie_/
$remote_addr`` are the anchors: the same key value must always reach the same replica,
whatever else the request carries, as long as the pool does not change.
"""

from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbproxy.argtypes import key_source
from lbproxy.frontend.routing_key import KeySource, parse_key
from lbproxy.ring import make_family

pytestmark = pytest.mark.unit


class FakePeer:
    """A transport's ``get_extra_info`` as asyncio answers it for a TCP peer."""

    def __init__(self, host: str) -> None:
        self.host = host

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.host, 40000) if name == "peername" else default


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("header:X-Request-ID", KeySource("header", "x-request-id")),
        ("header:X-User", KeySource("header", "x-user")),
        ("query:id", KeySource("query", "id")),
        ("cookie:session", KeySource("cookie", "session")),
        ("client-ip", KeySource("client-ip")),
        ("path", KeySource("path")),
        (" path ", KeySource("path")),
    ],
)
def test_parse_accepts_every_source(text: str, expected: KeySource) -> None:
    assert parse_key(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "foo",
        "header",
        "header:",
        "query:",
        "cookie:",
        "header:a b",
        "query:a=b",
        "cookie:a;b",
        "client-ip:x",
        "path:/x",
        "ip",
        "query:é",
    ],
)
def test_bad_key_values_get_one_sentence(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as info:
        key_source(text)
    message = str(info.value)
    assert message.count(". ") == 0 and "\n" not in message
    assert repr(text.strip()) in message or repr(text) in message


def test_default_source_defers_to_the_request_id() -> None:
    """The relay keeps X-Request-ID itself; the default source adds no work."""
    source = parse_key("header:X-Request-ID")
    assert source.is_request_id
    assert source.extract(b"/home", [(b"X-Request-ID", b"123456")], None) is None


def test_header_is_case_insensitive_and_first_wins() -> None:
    source = parse_key("header:X-User")
    headers = [(b"x-user", b" alice "), (b"X-User", b"bob")]
    assert source.extract(b"/", headers, None) == "alice"
    assert source.extract(b"/", [(b"X-User", b"")], None) is None
    assert source.extract(b"/", [], None) is None


def test_query_parameter_is_decoded() -> None:
    source = parse_key("query:id")
    assert source.extract(b"/home?a=1&id=42&id=43", [], None) == "42"
    assert source.extract(b"/home?id=a%20b+c", [], None) == "a b c"
    assert source.extract(b"/home?i%64=7", [], None) == "7"
    assert source.extract(b"/home?id=", [], None) is None
    assert source.extract(b"/home?idx=1", [], None) is None
    assert source.extract(b"/home", [], None) is None


def test_cookie_found_in_any_cookie_field() -> None:
    source = parse_key("cookie:sid")
    assert source.extract(b"/", [(b"Cookie", b"a=1; sid=xyz; b=2")], None) == "xyz"
    assert source.extract(b"/", [(b"Cookie", b"a=1"), (b"cookie", b'sid="q"')], None) == "q"
    assert source.extract(b"/", [(b"Cookie", b"sidx=1; a=sid")], None) is None


def test_path_and_client_ip() -> None:
    assert parse_key("path").extract(b"/a/b?x=1", [], None) == "/a/b"
    assert parse_key("client-ip").extract(b"/", [], FakePeer("10.1.2.3")) == "10.1.2.3"
    assert parse_key("client-ip").extract(b"/", [], None) is None
    # A client cannot pick its replica by forging X-Forwarded-For.
    forged = [(b"X-Forwarded-For", b"1.2.3.4")]
    assert parse_key("client-ip").extract(b"/", forged, FakePeer("10.0.0.9")) == "10.0.0.9"


# -- the property: same key value -> same replica, whatever else varies -----------------------

_value = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='%+&;="#?'),
    min_size=1,
    max_size=24,
)
_noise = st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=6), min_size=0, max_size=4)
RING = make_family("maglev", slots=4099).build({f"Server {i}": i for i in range(1, 6)})


def _request(source: str, value: str, noise: list[str], rid: int) -> tuple[bytes, list, object]:
    """A request whose key (per ``source``) is ``value`` and whose other parts are ``noise``."""
    extra = "&".join(f"n{i}={n}" for i, n in enumerate(noise))
    headers: list[tuple[bytes, bytes]] = [(b"X-Request-ID", str(rid).encode())]
    headers += [(f"X-Noise-{i}".encode(), n.encode()) for i, n in enumerate(noise)]
    url = f"/home?{extra}".encode()
    peer = FakePeer("127.0.0.1")
    if source == "header:X-User":
        headers.append((b"X-User", value.encode()))
    elif source == "query:id":
        url = f"/home?{extra}&id={value}".encode()
    elif source == "cookie:sid":
        cookies = "; ".join([f"c{i}={n}" for i, n in enumerate(noise)] + [f"sid={value}"])
        headers.append((b"Cookie", cookies.encode()))
    elif source == "client-ip":
        peer = FakePeer(value)
    elif source == "path":
        url = f"/{value}?{extra}".encode()
    return url, headers, peer


SOURCES = ("header:X-User", "query:id", "cookie:sid", "client-ip", "path")


@pytest.mark.parametrize("source", SOURCES)
@given(value=_value, noise_a=_noise, noise_b=_noise, rids=st.tuples(st.integers(), st.integers()))
def test_same_key_value_same_replica(
    source: str, value: str, noise_a: list[str], noise_b: list[str], rids: tuple[int, int]
) -> None:
    parsed = parse_key(source)
    keys = []
    for noise, rid in ((noise_a, rids[0]), (noise_b, rids[1])):
        url, headers, peer = _request(source, value, noise, rid)
        keys.append(parsed.extract(url, headers, peer))  # type: ignore[arg-type]
    expected = f"/{value}" if source == "path" else value
    assert keys == [expected, expected]
    assert RING.lookup(keys[0]) == RING.lookup(keys[1])
