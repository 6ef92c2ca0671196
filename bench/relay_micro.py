"""The relay's Python cost per request, without sockets: CPU-µs per proxied request when the
relay is driven through fake transports (issue 9's before/after, free of kernel noise).

    .venv/bin/python bench/relay_micro.py                       # this tree
    .venv/bin/python bench/relay_micro.py /tmp/lbproxy-before . # several trees, same run

Why: on this shared 2-core box a wrk run's CPU per request moves by 10-20% from run to
run, while the relay's own Python work is a small, steady part of it. Here one process per
tree builds a real ``Frontend`` (real Pool, Maglev ring, httptools parsers, UpstreamPool)
on uvloop, with 64 client and 3 x 64 upstream connections whose transports only keep what
they are given. Each request is wrk's (``GET /home`` with Host and a random X-Request-ID)
and each answer is server_app's ``/home`` reply, fed straight into the protocols, so the
figure is everything the balancer does per request except the syscalls and the event
loop's own work. It is a lower bound of the real cost, comparable between trees; the
kernel and loop share comes from ``http_bench.py --profile``.

Each tree runs in its own interpreter with PYTHONPATH pointing at it; the figure is the
best of 5 passes of ``N`` requests (BENCH_MICRO_N, default 100,000) of process CPU time.

``--profile``: also run each tree's drive under py-spy (1 kHz) and split the relay's
Python-side time into http_bench.py's categories (parsing, head rewrite, forwarded fields,
routing, response relay, the exchange's end...). With no syscalls in the drive, py-spy's
wall-clock samples are CPU samples, so these shares carry none of the bias that syscalls
give a profile of the real balancer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

#: Run inside the tree's interpreter: prints "RESULT <best µs per request>".
DRIVER = r"""
import asyncio, os, random, sys, time
import uvloop
from lbproxy.backends.base import ReplicaHandle
from lbproxy.config import ProxyConfig
from lbproxy.control.pool import Pool
from lbproxy.frontend import relay
from lbproxy.frontend.upstream import UpstreamConnection
from lbproxy.ring import make_family

N = int(os.environ.get("BENCH_MICRO_N", "100000"))
BODY = b'{"message": "Hello from Server: Server 2", "status": "successful"}'
RESP = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: %d\r\nDate: Mon, 07 Dec 2026 18:00:00 GMT\r\n"
    b"Server: Python/3.11 aiohttp/3.14.5\r\n\r\n" % len(BODY)
) + BODY
LAST = [None]


class Transport:
    def __init__(self):
        self.last = b""
    def write(self, data):
        self.last = data
        LAST[0] = self
    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default
    def pause_reading(self): pass
    def resume_reading(self): pass
    def close(self): pass
    def abort(self): pass
    def is_closing(self): return False


async def main():
    pool = Pool(make_family("maglev"))
    members = []
    for i in range(1, 4):
        member = pool.add(f"Server {i}")
        url = f"http://127.0.0.1:{50000 + i}"
        pool.set_handle(member, ReplicaHandle(f"Server {i}", url, str(1000 + i)))
        members.append(member)
    pool.mark_up(*members)
    stats = relay.ProxyStats()
    front = relay.Frontend(pool, ProxyConfig(), None, stats)
    upstream_of = {}
    for member in members:
        for _ in range(64):
            conn = UpstreamConnection(front.upstreams, member.url)
            transport = Transport()
            conn.connection_made(transport)
            upstream_of[id(transport)] = conn
            if hasattr(front.upstreams, "_open"):
                front.upstreams._open.add(conn)
            if hasattr(conn, "host"):
                conn.host.live += 1
            front.upstreams.put(conn)
    clients = []
    for _ in range(64):
        client = front.protocol()
        client.connection_made(Transport())
        clients.append(client)
    rnd = random.Random(1)
    requests = [
        b"GET /home HTTP/1.1\r\nHost: 127.0.0.1:5000\r\nX-Request-ID: %d\r\n\r\n"
        % rnd.randint(100000, 999999)
        for _ in range(4096)
    ]

    def run(n):
        for i in range(n):
            clients[i & 63].data_received(requests[i & 4095])
            upstream_of[id(LAST[0])].data_received(RESP)

    run(2000)
    assert stats.requests == 2000, stats.requests
    assert clients[0].transport.last.endswith(BODY), clients[0].transport.last
    best = float("inf")
    for _ in range(5):
        c0 = time.process_time()
        run(N)
        best = min(best, (time.process_time() - c0) / N * 1e6)
    print(f"RESULT {best:.3f}")


uvloop.run(main()) if hasattr(uvloop, "run") else asyncio.run(main())
"""


def measure(tree: Path, prefix: list[str] | None = None) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBPROXY_")}
    env["PYTHONPATH"] = str(tree)
    out = subprocess.run(
        [*(prefix or []), sys.executable, "-c", DRIVER],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return float(line.split()[1])
    raise RuntimeError(f"{tree}: the driver failed:\n{out.stdout}{out.stderr}")


def breakdown(tree: Path, us: float) -> str:
    """The drive of ``tree`` under py-spy: http_bench.py's categories, as µs per request."""
    from http_bench import breakdown_markdown, relay_breakdown

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory(prefix="relay-micro-") as tmp:
        raw = Path(tmp) / "stacks.txt"
        prefix = [spy, "record", "-r", "1000", "--function", "--format", "raw", "-o", str(raw)]
        measure(tree, [*prefix, "--"])
        # Only the timed drive (the function ``run``), not the setup (ring build, imports).
        lines = [ln for ln in raw.read_text().splitlines() if ";main.<locals>.run (<string>" in ln]
    table = breakdown_markdown(relay_breakdown("\n".join(lines)), us)
    # Here no event loop runs: what is left outside the relay is this drive's own loop.
    return table.replace("event loop: uvloop's C (callback dispatch, buffers), other", "the drive")


def main() -> int:
    args = sys.argv[1:]
    profile = "--profile" in args
    trees = [Path(a).resolve() for a in args if a != "--profile"] or [ROOT]
    results = []
    for tree in trees:
        us = measure(tree)
        results.append((tree, us))
        print(f"{tree}: {us:.2f} µs of CPU per request (Python side, fake transports)")
        if profile:
            print(breakdown(tree, us))
    if len(results) > 1:
        base = results[0][1]
        for tree, us in results[1:]:
            print(f"{tree} / {results[0][0]}: {us / base:.3f}x the CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
