"""The conformance harness: a scripted upstream and a raw-socket client that sees desyncs.

The scripted upstream is a bare asyncio server (no HTTP library on the answer side) that
sends exactly the bytes a test scripts, so the balancer can be fed what real servers
sometimes send: 1xx before the final answer, bodiless answers that carry framing headers,
close-delimited and reset bodies, junk after an answer, stalls. Each request it sees is
recorded (a smuggled second request shows up there). Answers carry ``X-Answer: <tag>``
where ``<tag>`` is the request's ``X-Tag``: a client that reads someone else's answer, or
the leftovers of one, sees it at once.

The raw client parses responses itself (independently of the code under test), knowing
what it asked for (HEAD), so a stray ``0\\r\\n\\r\\n`` or a missing body breaks the parse of
the *next* response on the same connection: the way a real client would desync.

A case's inputs can go to two proxies (a ``Target``): lbproxy in-process (``LbproxyTarget``)
or HAProxy in front of the same scripted upstream (``HaproxyTarget``: the project's
reference where a behaviour is in doubt). The case is the same code either way, so the
inputs are byte for byte the same; bench/conformance_vs_haproxy.py runs both and tabulates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import shutil
import socket
import struct
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httptools

from lbproxy.backends.base import DeathCallback, ReplicaHandle
from lbproxy.backends.process import ProcessBackend
from lbproxy.config import Config, ProxyConfig
from lbproxy.server import BalancerServer
from lbproxy_tools.launcher import free_loopback_port
from tests.conftest import fast_config

#: Upper bound on any single wait: a hang guard, never a performance claim.
GUARD = 5.0


@dataclass
class Seen:
    """A request as the upstream received it (after the balancer's rewriting)."""

    method: bytes
    path: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Close:
    """Script step: close the connection (FIN) after what was sent."""


class Reset:
    """Script step: reset the connection (RST: SO_LINGER 0)."""


@dataclass
class Stall:
    """Script step: wait until the test (or teardown) sets ``event``."""

    event: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Await:
    """Script step: wait until the upstream has received ``count`` bytes of request body
    (scripts normally run once the whole request arrived; ``early`` scripts run at the
    head and may use this to pace themselves)."""

    count: int


Step = bytes | Close | Reset | Stall | Await
#: A script: steps, or a function of the request giving the steps.
Script = Sequence[Step] | Callable[[Seen], Sequence[Step]]


def answer(
    status: int = 200,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    reason: str = "OK",
    length: bool = True,
) -> bytes:
    """A final answer tagged with the request's X-Tag, Content-Length framed by default."""
    lines = [f"HTTP/1.1 {status} {reason}\r\n", "X-Answer: {tag}\r\n"]
    lines += [f"{k}: {v}\r\n" for k, v in headers]
    if length:
        lines.append(f"Content-Length: {len(body)}\r\n")
    return "".join(lines).encode() + b"\r\n" + body


class _UpstreamConn(asyncio.Protocol):
    def __init__(self, server: ScriptedUpstream) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: asyncio.Queue[Seen | None] = asyncio.Queue()
        self.cur: Seen | None = None
        self.url = b""
        self.body_event = asyncio.Event()
        #: Carried a request other than a heartbeat (see ScriptedUpstream.data_connections).
        self.carried = False
        self.task = asyncio.get_running_loop().create_task(self.run())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.conns.add(self)
        self.server.connections += 1
        self.server.every_conn.append(self)

    def data_received(self, data: bytes) -> None:
        self.server.raw += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            self.server.parse_errors += 1
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.conns.discard(self)
        self.queue.put_nowait(None)

    def on_message_begin(self) -> None:
        self.cur = Seen(b"", b"", [])
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.cur is not None
        self.cur.headers.append((name, value))

    def on_headers_complete(self) -> None:
        cur = self.cur
        assert cur is not None
        cur.method = self.parser.get_method()
        cur.path = self.url
        self.server.seen.append(cur)
        if cur.path != b"/heartbeat":
            self.carried = True
        if self._script_for(cur)[1]:
            self.queue.put_nowait(cur)

    def on_body(self, body: bytes) -> None:
        assert self.cur is not None
        self.cur.body += body
        self.body_event.set()

    def on_message_complete(self) -> None:
        cur = self.cur
        assert cur is not None
        if not self._script_for(cur)[1]:
            self.queue.put_nowait(cur)

    def _script_for(self, seen: Seen) -> tuple[Script, bool]:
        path = seen.path.split(b"?", 1)[0].decode("latin-1")
        if path == "/heartbeat":
            return [b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], False
        if path == "/ok":
            return [answer(200, b"ok")], False
        name = path.removeprefix("/s/")
        if name in self.server.early:
            return self.server.early[name], True
        if name in self.server.scripts:
            return self.server.scripts[name], False
        missing = answer(404, b"not here", reason="Not Found")
        if seen.method == b"HEAD":  # a well-behaved replica: the head only (RFC 9110 9.3.2)
            missing = missing.removesuffix(b"not here")
        return [missing], False

    async def run(self) -> None:
        while True:
            seen = await self.queue.get()
            if seen is None:
                return
            script, _ = self._script_for(seen)
            steps = script(seen) if callable(script) else script
            tag = (seen.header(b"x-tag") or [b"-"])[0]
            for step in steps:
                transport = self.transport
                if transport is None or transport.is_closing():
                    return
                if isinstance(step, bytes):
                    transport.write(step.replace(b"{tag}", tag))
                elif isinstance(step, Close):
                    transport.close()
                    return
                elif isinstance(step, Reset):
                    sock = transport.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    transport.abort()
                    return
                elif isinstance(step, Stall):
                    self.server.stalled.set()
                    await step.event.wait()
                elif isinstance(step, Await):
                    while len(seen.body) < step.count:
                        self.body_event.clear()
                        await self.body_event.wait()


class ScriptedUpstream:
    """One scripted replica: a raw TCP server; ``scripts`` maps ``/s/<name>`` to steps."""

    def __init__(self, scripts: dict[str, Script], early: dict[str, Script]) -> None:
        self.scripts = scripts
        self.early = early
        self.seen: list[Seen] = []
        self.raw = bytearray()  # appended in place: += on bytes is quadratic
        self.conns: set[_UpstreamConn] = set()
        self.every_conn: list[_UpstreamConn] = []
        self.connections = 0
        self.parse_errors = 0
        self.stalled = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.port = free_loopback_port()
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _UpstreamConn(self), "127.0.0.1", self.port)

    def requests(self) -> list[Seen]:
        """What reached the upstream, heartbeats left out."""
        return [s for s in self.seen if s.path != b"/heartbeat"]

    def data_connections(self) -> int:
        """Connections that carried a request (heartbeats left out): 1 after several
        sequential exchanges means the proxy kept reusing the first one."""
        return sum(1 for c in self.every_conn if c.carried)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.conns):
            conn.task.cancel()
            if conn.transport is not None:
                conn.transport.abort()
        if self.server is not None:
            await self.server.wait_closed()


class ScriptedBackend:
    """A replica backend whose replicas are scripted upstreams (shared scripts)."""

    default_prefix = "Scripted "

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.early: dict[str, Script] = {}
        self.upstreams: dict[str, ScriptedUpstream] = {}
        self.handles: dict[str, ReplicaHandle] = {}
        self._ids = itertools.count(1)
        self._validator = ProcessBackend(Config())

    def validate_name(self, name: object) -> str:
        return self._validator.validate_name(name)

    async def open(self, on_death: DeathCallback) -> None:
        return None

    async def close(self) -> None:
        for upstream in list(self.upstreams.values()):
            await upstream.stop()
        self.upstreams.clear()
        self.handles.clear()

    async def adopt(self) -> list[ReplicaHandle]:
        return []

    async def launch(self, name: str, ring_id: int) -> ReplicaHandle:
        upstream = ScriptedUpstream(self.scripts, self.early)
        await upstream.start()
        backend_id = f"s{next(self._ids)}"
        self.upstreams[backend_id] = upstream
        handle = ReplicaHandle(name, f"http://127.0.0.1:{upstream.port}", backend_id, ring_id)
        self.handles[backend_id] = handle
        return handle

    async def stop(self, handle: ReplicaHandle, *, timeout: float) -> None:
        upstream = self.upstreams.pop(handle.backend_id, None)
        self.handles.pop(handle.backend_id, None)
        if upstream is not None:
            await upstream.stop()

    async def list(self) -> list[ReplicaHandle]:
        """The running upstreams: the balancer's resync replaces a replica it does not list."""
        return list(self.handles.values())

    @property
    def only(self) -> ScriptedUpstream:
        (upstream,) = self.upstreams.values()
        return upstream


@dataclass
class Response:
    """A response as the raw client parsed it."""

    version: bytes
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    #: How the body ended: "length", "chunked", "close", "none", or "reset"/"truncated".
    ended: str = "none"

    def header(self, name: str) -> list[bytes]:
        n = name.lower().encode()
        return [v for k, v in self.headers if k.lower() == n]

    def one(self, name: str) -> bytes | None:
        values = self.header(name)
        return values[0] if values else None

    @property
    def tag(self) -> bytes | None:
        return self.one("X-Answer")


class Desync(AssertionError):
    """What the client read is not a well-formed response where one must start."""


class RawClient:
    """A client on one raw connection: sends bytes, reads responses strictly."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        trace: list[str] | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        #: What this client read, one short entry per response ("200[a] length"): the
        #: comparison table shows it where two proxies differ.
        self.trace: list[str] = [] if trace is None else trace

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def _read(self, coro: object) -> bytes:
        try:
            return await asyncio.wait_for(coro, GUARD)  # type: ignore[arg-type]
        except TimeoutError:
            self.trace.append("hang")
            raise AssertionError("no response within the hang guard") from None

    async def read_head(self) -> Response:
        try:
            head = await self._read(self.reader.readuntil(b"\r\n\r\n"))
        except asyncio.IncompleteReadError as exc:
            self.trace.append("closed" if not exc.partial else "desync")
            raise Desync(f"connection ended before a response head: {exc.partial!r}") from None
        except ConnectionResetError:
            self.trace.append("reset")
            raise Desync("connection reset before a response head") from None
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            self.trace.append("desync")
            raise Desync(f"not a status line: {lines[0][:80]!r}")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise Desync(f"bad header line {line[:80]!r}")
            headers.append((name, value.strip()))
        resp = Response(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else b"", headers)
        self.trace.append(
            str(resp.status) + (f"[{resp.tag.decode('latin-1')}]" if resp.tag else "")
        )
        return resp

    async def read_response(self, method: bytes = b"GET") -> tuple[list[Response], Response]:
        """Interim (1xx) responses, then the final one with its body."""
        interims: list[Response] = []
        while True:
            resp = await self.read_head()
            if 100 <= resp.status < 200 and resp.status != 101:
                interims.append(resp)
                continue
            break
        return interims, await self.read_response_body(resp, method)

    async def read_response_body(self, resp: Response, method: bytes = b"GET") -> Response:
        """The body of a response whose head ``read_head`` returned."""
        te = b",".join(resp.header("Transfer-Encoding")).lower()
        lengths = resp.header("Content-Length")
        if method == b"HEAD" or resp.status in (204, 304) or resp.status == 101:
            resp.ended = "none"
        elif te:
            if te.split(b",")[-1].strip() != b"chunked":
                await self._until_close(resp)
            else:
                await self._chunked(resp)
        elif lengths:
            if len(set(lengths)) != 1:
                raise Desync(f"conflicting Content-Length {lengths!r}")
            n = int(lengths[0])
            try:
                resp.body = await self._read(self.reader.readexactly(n))
                resp.ended = "length"
            except asyncio.IncompleteReadError as exc:
                resp.body, resp.ended = exc.partial, "truncated"
            except ConnectionResetError:
                resp.ended = "reset"
        else:
            await self._until_close(resp)
        if resp.ended != "none" and self.trace:
            self.trace[-1] += f" {resp.ended}"
        return resp

    async def _until_close(self, resp: Response) -> None:
        try:
            resp.body = await self._read(self.reader.read())
            resp.ended = "close"
        except ConnectionResetError:
            resp.ended = "reset"

    async def _chunked(self, resp: Response) -> None:
        body = b""
        try:
            while True:
                line = await self._read(self.reader.readuntil(b"\r\n"))
                size_text = line[:-2].split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise Desync(f"bad chunk size line {line[:80]!r}") from None
                if size == 0:
                    while (await self._read(self.reader.readuntil(b"\r\n"))) != b"\r\n":
                        pass  # trailer fields
                    break
                chunk = await self._read(self.reader.readexactly(size + 2))
                if chunk[-2:] != b"\r\n":
                    raise Desync("chunk not followed by CRLF")
                body += chunk[:-2]
            resp.ended = "chunked"
        except asyncio.IncompleteReadError:
            resp.ended = "truncated"
        except ConnectionResetError:
            resp.ended = "reset"
        resp.body = body

    async def request(self, data: bytes, method: bytes = b"GET") -> Response:
        self.send(data)
        return (await self.read_response(method))[1]

    async def at_eof(self) -> bool:
        """True when the balancer closed (or reset) this connection without more bytes."""
        try:
            rest = await self._read(self.reader.read(1))
        except ConnectionResetError:
            rest = b""
        self.trace.append("closed" if rest == b"" else "open")
        return rest == b""

    def close(self) -> None:
        self.writer.transport.abort()


def get(path: str, tag: str, *extra: str, method: str = "GET", version: str = "1.1") -> bytes:
    """A small request with an X-Tag (and a fixed ring key, so the owner never moves)."""
    lines = [f"{method} {path} HTTP/{version}", "Host: lb.test", f"X-Tag: {tag}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Rig:
    """A running proxy (lbproxy, or HAProxy) with one scripted replica, and clients."""

    #: The balancer under test; None when the proxy is HAProxy (lbproxy-only checks skip).
    server: BalancerServer | None
    backend: ScriptedBackend
    host: str
    port: int
    clients: list[RawClient] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)

    @property
    def upstream(self) -> ScriptedUpstream:
        return self.backend.only

    @property
    def lbproxy(self) -> BalancerServer:
        """The balancer, for checks of lbproxy's own state (only on the lbproxy target)."""
        assert self.server is not None, "an lbproxy-only check ran against another proxy"
        return self.server

    async def client(self) -> RawClient:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        c = RawClient(reader, writer, self.trace)
        self.clients.append(c)
        return c

    async def next_client_is_served(self, tag: str = "next") -> None:
        """A fresh client, routed to the same replica (likely on the same pooled upstream
        connection), gets its own answer: what a desynced upstream connection breaks."""
        self.trace.append("| next:")
        c = await self.client()
        resp = await c.request(get("/ok", tag))
        assert resp.status == 200 and resp.tag == tag.encode(), (
            f"next client got {resp.status} tagged {resp.tag!r}"
        )
        assert resp.body == b"ok", f"next client got body {resp.body[:40]!r}"


def _release(r: Rig) -> None:
    """Teardown: close the clients and let every stalled script go on."""
    for c in r.clients:
        c.close()
    for upstream in r.backend.upstreams.values():
        for conn in upstream.conns:
            for step in _stalls(conn):
                step.event.set()


@asynccontextmanager
async def rig(
    scripts: dict[str, Script] | None = None,
    early: dict[str, Script] | None = None,
    proxy: ProxyConfig | None = None,
    trace: list[str] | None = None,
    **config: object,
) -> AsyncIterator[Rig]:
    backend = ScriptedBackend()
    backend.scripts.update(scripts or {})
    backend.early.update(early or {})
    cfg = fast_config(replicas=1, proxy=proxy or ProxyConfig(read_timeout=3.0), **config)
    server = BalancerServer(cfg, backend)  # type: ignore[arg-type]
    await server.start()
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    r = Rig(server, backend, host, int(port), trace=[] if trace is None else trace)
    try:
        yield r
    finally:
        _release(r)
        await server.stop()


def _stalls(conn: _UpstreamConn) -> list[Stall]:
    server = conn.server
    out: list[Stall] = []
    for script in [*server.scripts.values(), *server.early.values()]:
        if not callable(script):
            out += [s for s in script if isinstance(s, Stall)]
    return out


# -- targets: the same case through lbproxy or through HAProxy ---------------------------------

#: The settings a case may change, with the rig's defaults: ``read_timeout`` (lbproxy's
#: ``--read-timeout``, HAProxy's ``timeout server``) and ``max_body`` (lbproxy's
#: ``--max-body``; HAProxy has no equivalent for a streamed body, so it is not set there).
READ_TIMEOUT = 3.0


class Target:
    """A proxy a case's inputs are sent through."""

    name = "?"

    def __init__(self) -> None:
        #: Every rig this target made appends here (the comparison table shows it).
        self.trace: list[str] = []

    def rig(
        self,
        scripts: dict[str, Script] | None = None,
        early: dict[str, Script] | None = None,
        *,
        read_timeout: float = READ_TIMEOUT,
        max_body: int | None = None,
        max_conns: int | None = None,
    ) -> AbstractAsyncContextManager[Rig]:
        raise NotImplementedError

    @property
    def is_lbproxy(self) -> bool:
        return self.name == "lbproxy"


class LbproxyTarget(Target):
    """lbproxy in-process (BalancerServer) with one scripted replica."""

    name = "lbproxy"

    def rig(
        self,
        scripts: dict[str, Script] | None = None,
        early: dict[str, Script] | None = None,
        *,
        read_timeout: float = READ_TIMEOUT,
        max_body: int | None = None,
        max_conns: int | None = None,
    ) -> AbstractAsyncContextManager[Rig]:
        proxy = ProxyConfig(read_timeout=read_timeout)
        if max_body is not None:
            proxy = dataclasses.replace(proxy, max_body_bytes=max_body)
        if max_conns is not None:
            proxy = dataclasses.replace(proxy, max_conns_per_replica=max_conns)
        return rig(scripts, early, proxy=proxy, trace=self.trace)


#: HAProxy's configuration for a case: one backend, the scripted upstream; keep-alive on
#: both sides and ``http-reuse always`` (idle server connections shared between clients,
#: like lbproxy's pool), so a desynced server connection reaches the next client as it
#: would through lbproxy. Timeouts mirror lbproxy's (ProxyConfig) for the rig.
HAPROXY_CFG = """\
# Generated by tests/conformance_kit.py for one conformance case.
global
    nbthread 1
    maxconn 500

defaults
    mode http
    option http-keep-alive
    http-reuse always
    retries 2
    timeout connect 1s
    timeout http-request 10s
    timeout client 60s
    timeout http-keep-alive 60s
    timeout server {read_timeout_ms}ms

frontend conformance_in
    bind 127.0.0.1:{port}
    default_backend replica

backend replica
    server r1 127.0.0.1:{upstream}
"""


def haproxy_binary() -> str | None:
    """HAProxy's path (bench/install-tools.sh installs it), or None."""
    found = shutil.which("haproxy")
    if found:
        return found
    return "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None


class HaproxyTarget(Target):
    """HAProxy (started per case on a free 127.0.0.1 port, stopped by its PID) in front of
    a scripted upstream: the same scripts, the same client bytes."""

    name = "haproxy"

    def rig(
        self,
        scripts: dict[str, Script] | None = None,
        early: dict[str, Script] | None = None,
        *,
        read_timeout: float = READ_TIMEOUT,
        max_body: int | None = None,
        max_conns: int | None = None,
    ) -> AbstractAsyncContextManager[Rig]:
        return self._rig(scripts, early, read_timeout)

    @asynccontextmanager
    async def _rig(
        self,
        scripts: dict[str, Script] | None,
        early: dict[str, Script] | None,
        read_timeout: float,
    ) -> AsyncIterator[Rig]:
        binary = haproxy_binary()
        assert binary is not None, "haproxy is not installed (bench/install-tools.sh)"
        backend = ScriptedBackend()
        backend.scripts.update(scripts or {})
        backend.early.update(early or {})
        handle = await backend.launch("r1", 1)
        upstream_port = int(handle.url.rsplit(":", 1)[1])
        port = free_loopback_port()
        with tempfile.TemporaryDirectory(prefix="lbproxy-conformance-") as tmp:
            cfg = Path(tmp) / "haproxy.cfg"
            cfg.write_text(
                HAPROXY_CFG.format(
                    port=port, upstream=upstream_port, read_timeout_ms=int(read_timeout * 1000)
                )
            )
            log = (Path(tmp) / "haproxy.log").open("wb")
            # -db: foreground, one process, so the PID we hold is the proxy itself.
            proc = await asyncio.create_subprocess_exec(
                binary,
                "-db",
                "-f",
                str(cfg),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            r = Rig(None, backend, "127.0.0.1", port, trace=self.trace)
            try:
                await _until_listening(port, proc, Path(tmp) / "haproxy.log")
                yield r
            finally:
                _release(r)
                if proc.returncode is None:
                    with suppress(ProcessLookupError):
                        os.kill(proc.pid, 15)  # SIGTERM, by PID
                    try:
                        await asyncio.wait_for(proc.wait(), GUARD)
                    except TimeoutError:
                        with suppress(ProcessLookupError):
                            os.kill(proc.pid, 9)
                        await proc.wait()
                log.close()
                await backend.close()


def _tail(path: Path) -> str:
    """The end of HAProxy's log, for an error message."""
    return path.read_text(errors="replace")[-2000:]


async def _until_listening(port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
    """Wait (bounded by GUARD) until HAProxy accepts connections on ``port``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"haproxy exited {proc.returncode}: {_tail(log)}")
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise RuntimeError(f"haproxy did not listen: {_tail(log)}") from None
            await asyncio.sleep(0.01)
            continue
        writer.transport.abort()
        return


def target(name: str) -> Target:
    """``lbproxy`` or ``haproxy``."""
    if name == "lbproxy":
        return LbproxyTarget()
    if name == "haproxy":
        return HaproxyTarget()
    raise ValueError(f"unknown conformance target {name!r}")
