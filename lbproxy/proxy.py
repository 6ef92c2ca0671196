"""The request path: key -> pool.pick -> forward on the shared session; retry elsewhere.

Kept lean on purpose (one ring lookup, one upstream call, no locks, no awaits on anything
but the sockets). A request whose connection fails before any response byte goes to the
next distinct replica on the ring, so a client never sees one replica's death.
"""

from __future__ import annotations

import logging
import random

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, MultiMapping

from lbproxy.config import ProxyConfig
from lbproxy.errors import EmptyRingError, failure_body
from lbproxy.pool import Pool, Replica

log = logging.getLogger(__name__)

REQUEST_ID = "X-Request-ID"

#: RFC 9110 7.6.1 hop-by-hop fields, never forwarded in either direction.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Bodies up to this size are buffered so the request can be replayed on another replica.
BUFFER_LIMIT = 1024 * 1024
#: Responses up to this size are read whole and sent in one write.
SMALL_RESPONSE = 64 * 1024

#: Failures that happen before the replica sent any response byte: safe to retry.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
)
RESET_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
)


def random_request_id() -> str:
    """SPEC's request id: a random 6-digit integer."""
    return str(random.randint(100000, 999999))


def _forward_headers(headers: MultiMapping[str], request_id: str) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    connection_tokens: set[str] = set()
    items = list(headers.items())
    for key, value in items:
        if key.lower() == "connection":
            connection_tokens.update(t.strip().lower() for t in value.split(","))
    for key, value in items:
        lower = key.lower()
        if lower in HOP_BY_HOP or lower in connection_tokens:
            continue
        out.add(key, value)
    out[REQUEST_ID] = request_id
    return out


def _response_headers(upstream: aiohttp.ClientResponse, request_id: str) -> CIMultiDict[str]:
    out = _forward_headers(upstream.headers, request_id)
    out.popall(hdrs.CONTENT_LENGTH, None)
    return out


def failure(status: int, message: str, request_id: str | None = None) -> web.Response:
    resp = web.json_response(failure_body(message), status=status)
    if request_id is not None:
        resp.headers[REQUEST_ID] = request_id
    return resp


class Proxy:
    """Forwards every request that is not one of the balancer's own endpoints."""

    def __init__(
        self,
        pool: Pool,
        session: aiohttp.ClientSession,
        config: ProxyConfig,
    ) -> None:
        self._pool = pool
        self._session = session
        self._config = config
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout, sock_read=config.read_timeout
        )
        self.retries = 0
        self.errors = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request_id = request.headers.get(REQUEST_ID) or random_request_id()
        method = request.method
        length = request.content_length
        if length is not None and length > self._config.max_body_bytes:
            return failure(
                413,
                f"request body of {length} bytes exceeds the limit of "
                f"{self._config.max_body_bytes} bytes",
                request_id,
            )
        body: bytes | aiohttp.StreamReader | None = None
        replayable = True
        if request.body_exists:
            if length is not None and length <= BUFFER_LIMIT:
                body = await request.read()
            else:
                body = request.content  # streamed: cannot be replayed on another replica
                replayable = False
        headers = _forward_headers(request.headers, request_id)
        path_qs = request.raw_path
        try:
            candidates = self._pool.pick(request_id)
            attempts = 0
            for replica in candidates:
                attempts += 1
                replica.in_flight += 1
                try:
                    upstream = await self._session.request(
                        method,
                        replica.url + path_qs,
                        headers=headers,
                        data=body,
                        allow_redirects=False,
                        timeout=self._timeout,
                        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                    )
                except CONNECT_ERRORS as exc:
                    replica.in_flight -= 1
                    if not replayable or attempts > self._config.retries:
                        return self._fail(
                            502, f"replica {replica.name!r} unreachable: {exc}", request_id
                        )
                    self.retries += 1
                    continue
                except RESET_ERRORS as exc:
                    replica.in_flight -= 1
                    if (
                        not replayable
                        or method not in IDEMPOTENT
                        or attempts > self._config.retries
                    ):
                        return self._fail(
                            502, f"replica {replica.name!r} failed: {exc}", request_id
                        )
                    self.retries += 1
                    continue
                except TimeoutError:
                    replica.in_flight -= 1
                    return self._fail(504, f"replica {replica.name!r} timed out", request_id)
                try:
                    return await self._relay(request, upstream, replica, request_id)
                finally:
                    replica.in_flight -= 1
                    upstream.release()
            return self._fail(502, "no replica could take the request", request_id)
        except EmptyRingError:
            return self._fail(503, "no replica is available", request_id)

    def _fail(self, status: int, message: str, request_id: str) -> web.Response:
        self.errors += 1
        return failure(status, message, request_id)

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        replica: Replica,
        request_id: str,
    ) -> web.StreamResponse:
        if replica.served == 0:
            self._pool.events.emit("first_response", replica.name, f"status {upstream.status}")
        replica.served += 1
        replica.served_total += 1
        if upstream.status == 404:
            await upstream.read()
            return failure(
                400,
                f"'{request.path}' endpoint does not exist in server replicas",
                request_id,
            )
        headers = _response_headers(upstream, request_id)
        length = upstream.content_length
        response: web.StreamResponse | None = None
        try:
            if length is not None and length <= SMALL_RESPONSE:
                body = await upstream.read()
                return web.Response(
                    status=upstream.status, reason=upstream.reason, body=body, headers=headers
                )
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=headers
            )
            if length is not None:
                response.content_length = length
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The replica failed mid-response: nothing is safe to retry. Before our headers
            # went out the client gets a 502; after, the connection is cut so it sees a
            # truncated body rather than a silently short one.
            log.warning("replica %r failed mid-response: %s", replica.name, exc)
            self.errors += 1
            if response is not None and response.prepared:
                raise
            return failure(502, f"replica {replica.name!r} failed mid-response", request_id)
