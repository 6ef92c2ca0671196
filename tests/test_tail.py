"""Tail latency under load (issue 14) and upstream connection care (issue 9, tail's part).

Every test waits on counters or events; none sleeps and samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from lbproxy.backends.base import ReplicaHandle
from lbproxy.config import ProxyConfig
from lbproxy.control.pool import Pool, Replica, ReplicaState
from lbproxy.frontend.relay import Frontend
from lbproxy.server import BalancerServer
from tests.conftest import BalancerUnderTest, InProcessBackend, fast_config, wait_for

pytestmark = pytest.mark.inprocess


@pytest.mark.lbconfig(proxy=ProxyConfig(phase_timings=True))
async def test_phase_timings_reach_the_metrics(lb: BalancerUnderTest) -> None:
    for i in range(5):
        async with lb.client.get(lb.url + "/home", headers={"X-Request-ID": str(300000 + i)}) as r:
            assert r.status == 200
    async with lb.client.get(lb.url + "/lbproxy/metrics") as r:
        text = await r.text()
    counts = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("lbproxy_phase_seconds_count{")
    }
    for phase in ("head", "pipeline", "acquire", "upstream", "relay"):
        assert counts[phase] == 5, (phase, counts)


# -- a replica whose accept queue the test can fill ----------------------------------------


class GatedReplica:
    """A minimal keep-alive HTTP/1.1 server on a listening socket with a backlog of 1 whose
    accepting the test turns off: then the kernel's accept queue fills and new SYNs are
    dropped (a connect times out), while the connections it already accepted keep being
    served. That is a replica overloaded, not a dead one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.hold = asyncio.Event()  # /hold answers once this is set
        self.held = asyncio.Event()  # a /hold request arrived
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self.fillers: list[socket.socket] = []
        self.log: list[tuple[int, bytes]] = []  # (connection number, request line)
        #: Close, unanswered, any request after the first on a connection (heartbeats
        #: aside): the server closing an idle keep-alive connection as our request arrives.
        self.drop_reused = False
        self.dropped = 0
        self.accepted = 0
        self.acceptor: asyncio.Task[None] | None = None
        self.open_gate()

    def open_gate(self) -> None:
        self.acceptor = asyncio.create_task(self._accept())

    async def close_gate(self) -> None:
        """Stop accepting, then fill the accept queue until a connect goes unanswered."""
        assert self.acceptor is not None
        self.acceptor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.acceptor
        loop = asyncio.get_running_loop()
        for _ in range(16):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            self.fillers.append(s)
            try:
                await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", self.port)), 0.2)
            except TimeoutError:
                return  # this SYN was dropped: the queue is full
        raise AssertionError("the accept queue never filled")

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            task = asyncio.create_task(self._serve(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _serve(self, conn: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=conn)
        self.writers.append(writer)
        self.accepted += 1
        number = self.accepted
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.log.append((number, head.split(b"\r\n", 1)[0]))
                served_before = sum(1 for n, _ in self.log if n == number) > 1
                if self.drop_reused and served_before and b"/heartbeat" not in head:
                    self.dropped += 1
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"GET /hold"):
                    self.held.set()
                    await self.hold.wait()
                body = b'{"replica": "%s"}' % self.name.encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.acceptor is not None:
            self.acceptor.cancel()
        for task in list(self.tasks):
            task.cancel()
        for w in self.writers:
            w.close()
        for s in self.fillers:
            s.close()
        self.sock.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class GatedBackend(InProcessBackend):
    """Replicas are GatedReplica servers (the real balancer, heartbeats included)."""

    def __init__(self) -> None:
        super().__init__()
        self.gated: dict[str, GatedReplica] = {}
        self.handles: dict[str, ReplicaHandle] = {}

    async def launch(self, name: str, ring_id: int) -> ReplicaHandle:
        replica = GatedReplica(name)
        self.gated[name] = replica
        handle = ReplicaHandle(name, f"http://127.0.0.1:{replica.port}", f"g{name}", ring_id)
        self.handles[name] = handle
        return handle

    async def stop(self, handle: ReplicaHandle, *, timeout: float) -> None:
        replica = self.gated.pop(handle.name, None)
        self.handles.pop(handle.name, None)
        if replica is not None:
            await replica.close()

    async def list(self) -> list[ReplicaHandle]:
        """What runs: the balancer's resync replaces a replica its backend does not list."""
        return list(self.handles.values())

    async def close(self) -> None:
        for replica in list(self.gated.values()):
            await replica.close()
        self.gated.clear()
        self.handles.clear()


@contextlib.asynccontextmanager
async def gated_balancer(**proxy: Any) -> AsyncIterator[tuple[BalancerServer, GatedBackend]]:
    backend = GatedBackend()
    config = fast_config(replicas=2, proxy=ProxyConfig(**proxy))
    server = BalancerServer(config, backend)
    await server.start()
    try:
        yield server, backend
    finally:
        await server.stop()
        await backend.close()


def key_owned_by(pool: Pool, name: str) -> str:
    return next(k for k in (str(100000 + i) for i in range(10000)) if pool.owner(k).name == name)


@dataclass
class GatedRig:
    """A gated balancer, a client, and the first replica with a routing key it owns."""

    server: BalancerServer
    backend: GatedBackend
    client: aiohttp.ClientSession
    front: Frontend
    pool: Pool
    name: str
    gated: GatedReplica
    key: str

    def replica(self) -> Replica:
        return next(r for r in self.pool.replicas() if r.name == self.name)

    def get(self, path: str) -> Any:
        """``GET path`` routed to the gated replica (await it, or ``async with`` it)."""
        return self.client.get(self.server.url + path, headers={"X-Request-ID": self.key})

    def spawn(self, path: str) -> asyncio.Task[aiohttp.ClientResponse]:
        """The same request as a task that runs while the test looks at the balancer."""
        return asyncio.create_task(self.get(path))


@contextlib.asynccontextmanager
async def gated_rig(**proxy: Any) -> AsyncIterator[GatedRig]:
    async with gated_balancer(**proxy) as (server, backend), aiohttp.ClientSession() as client:
        assert server.frontend is not None
        pool = server.balancer.pool
        name = sorted(backend.gated)[0]
        yield GatedRig(
            server,
            backend,
            client,
            server.frontend,
            pool,
            name,
            backend.gated[name],
            key_owned_by(pool, name),
        )


async def test_connect_timeout_on_a_busy_replica_does_not_eject_it() -> None:
    """Issue 14, overload is not failure: the replica's accept queue is full (its new
    connects time out) while it answers on the connections it has. HAProxy counts such
    a server as up as long as its checks pass; here one failure in a row would eject."""
    async with gated_rig(connect_timeout=0.3, eject_after=1, retries=2) as rig:
        async with rig.get("/home") as r:
            assert r.status == 200  # one pooled upstream connection to the gated replica
        await rig.gated.close_gate()
        hold = rig.spawn("/hold")
        await rig.gated.held.wait()  # the pooled connection carries /hold
        other = rig.spawn("/home")
        await wait_for(lambda: rig.front.in_flight == 2)  # /home is connecting (SYN dropped)
        rig.gated.hold.set()  # meanwhile the replica answers on its existing connection
        async with await hold as r:
            assert r.status == 200
        async with await other as r:
            assert r.status == 200
        assert rig.front.stats.upstream_errors.get("connect_timeout", 0) == 0
        assert rig.front.stats.upstream_errors["connect_overload"] == 1
        replica = rig.replica()
        assert replica.state is ReplicaState.UP and replica.ejections == 0


async def test_requests_over_the_cap_wait_in_fifo_order_on_one_connection() -> None:
    """HAProxy's server maxconn + queue: with a cap of one connection, requests queue and
    reach the replica in arrival order, all on that one connection."""
    async with gated_rig(max_conns_per_replica=1) as rig:
        hold = rig.spawn("/hold")
        await rig.gated.held.wait()
        waiting = []
        for i in range(5):
            waiting.append(rig.spawn(f"/home?n={i}"))
            await wait_for(lambda i=i: rig.front.upstreams.waiting() == i + 1)
        rig.gated.hold.set()
        for task in [hold, *waiting]:
            async with await task as r:
                assert r.status == 200
        log = rig.gated.log
        ours = [(n, line) for n, line in log if not line.startswith(b"GET /heartbeat")]
        held_on = next(n for n, line in ours if line.startswith(b"GET /hold"))
        homes = [(n, line) for n, line in ours if line.startswith(b"GET /home?n=")]
        assert [line for _, line in homes] == [b"GET /home?n=%d HTTP/1.1" % i for i in range(5)]
        assert {n for n, _ in homes} == {held_on}  # the one capped connection, reused
        assert rig.front.upstreams.queued == 5


async def test_queue_timeout_is_a_503_in_the_failure_shape() -> None:
    """With ``Retry-After: 1`` (RFC 9110 15.6.4, 10.2.3): the replica is up but busy, and a
    slot is likely free again within a second; the client need not wait out the queue."""
    async with gated_rig(max_conns_per_replica=1, queue_timeout=0.1) as rig:
        hold = rig.spawn("/hold")
        await rig.gated.held.wait()
        async with rig.get("/home") as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "1"
            body = await r.json()
        assert body["status"] == "failure"
        assert "connection limit" in body["message"] and rig.name in body["message"]
        rig.gated.hold.set()
        async with await hold as r:
            assert r.status == 200
        replica = rig.replica()
        assert replica.state is ReplicaState.UP and replica.in_flight == 0
        async with rig.get("/lbproxy/metrics") as r:
            text = await r.text()
        assert "lbproxy_queue_timeouts_total 1.0" in text
        assert "lbproxy_queued_total 1.0" in text


async def test_idle_upstream_connections_expire() -> None:
    """Issue 9: pooled connections are closed after --upstream-idle-timeout, below the
    replica server's keep-alive (aiohttp's client keeps idle sockets 15 s for this)."""
    async with (
        gated_balancer(upstream_idle_timeout=0.05) as (server, _backend),
        aiohttp.ClientSession() as client,
    ):
        front = server.frontend
        assert front is not None
        async with client.get(server.url + "/home", headers={"X-Request-ID": "123456"}) as r:
            assert r.status == 200
        opened = front.upstreams.opened
        await wait_for(lambda: front.upstreams.expired >= 1)
        async with client.get(server.url + "/home", headers={"X-Request-ID": "123456"}) as r:
            assert r.status == 200
        assert front.upstreams.opened == opened + 1  # a fresh connection, not the expired one


async def test_reused_connection_closed_before_any_byte_is_retried_for_any_method() -> None:
    """Issue 9: the replica closes a pooled connection just as a POST goes out on it.
    Nothing reached its application, so the POST is sent again on a fresh connection to
    the same replica (Go's net/http and HAProxy's http-reuse safe guard this race), and
    the replica is not charged a failure."""
    async with gated_rig(eject_after=1) as rig:
        async with rig.get("/home") as r:
            assert r.status == 200  # the connection is now pooled
        rig.gated.drop_reused = True
        async with rig.client.post(
            rig.server.url + "/submit", data=b"payload", headers={"X-Request-ID": rig.key}
        ) as r:
            assert r.status == 200
            assert (await r.json())["replica"] == rig.name
        assert rig.gated.dropped == 1
        posts = [line for _, line in rig.gated.log if line.startswith(b"POST /submit")]
        assert len(posts) == 2  # the dropped one and the retry
        replica = rig.replica()
        assert replica.state is ReplicaState.UP and replica.failures == 0
        assert rig.front.stats.upstream_errors["stale_connection"] == 1


@pytest.mark.lbconfig(proxy=ProxyConfig(max_conns_per_replica=1, queue_timeout=0.2))
async def test_an_open_websocket_does_not_hold_the_replicas_connection_slot(
    lb: BalancerUnderTest,
) -> None:
    """A tunnel lives for minutes: counted against --max-conns-per-replica it would starve
    the replica's HTTP requests (here: queued, then 503 after the queue timeout)."""
    headers = {"X-Request-ID": "246810"}
    async with lb.client.ws_connect(lb.url + "/ws", headers=headers) as ws:
        await ws.send_str("hello")
        assert (await ws.receive_str()) == "hello"
        async with lb.client.get(lb.url + "/home", headers=headers) as r:
            assert r.status == 200
        await ws.send_str("still here")
        assert (await ws.receive_str()) == "still here"


@pytest.mark.lbconfig(proxy=ProxyConfig(upstream_idle_timeout=0.05))
async def test_a_removed_replicas_pool_state_is_dropped(lb: BalancerUnderTest) -> None:
    """Replacements come back on new ports: per-address state must not pile up."""
    front_pool = lb.balancer.pool
    owner = front_pool.owner("135791")
    url = owner.url
    async with lb.client.get(lb.url + "/home", headers={"X-Request-ID": "135791"}) as r:
        assert r.status == 200
    async with lb.client.delete(lb.url + "/rm", json={"n": 1, "hostnames": [owner.name]}) as r:
        assert r.status == 200
    server = lb.balancer  # the frontend's pool is reached through the stats it shares
    upstreams = server.stats.upstreams
    assert upstreams is not None
    await wait_for(lambda: not upstreams.known(url))
