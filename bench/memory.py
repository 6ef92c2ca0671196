"""Memory of the lbproxy balancer process, and the ring's build and lookup times.

Run from the repository root (``make bench`` runs it after the HTTP bench)::

    .venv/bin/python bench/memory.py              # N=3 and N=100 replicas, 1,000 idle clients
    BENCH_QUICK=1 .venv/bin/python bench/memory.py  # N=3 and N=10, 200 idle clients
    .venv/bin/python bench/memory.py --no-ring    # skip the ring figures

Figures (RSS = VmRSS; the balancer process, its ring build worker and their total, never
its replica children):

* N=3: RSS once the pool is up; after 5 s of wrk load; with 1,000 client connections open
  and idle (nothing sent), then with the same connections each holding a partial request
  (headers without the final blank line); and after they are closed.
* Each row also gives the ring build worker's RSS (lbproxy/ring/offload.py: a ``spawn``ed
  child that keeps the last Maglev table's rank state, 48 MiB at the default size,
  docs/ring.md) and the total of the balancer and its helper processes (the worker and
  multiprocessing's resource tracker): what ``lbproxy serve`` costs, replicas aside.
* N=100 (``--replicas 100``, real server_app processes): the balancer's RSS, its open fds,
  how long the pool took to come up, and the replicas' total PSS for scale.
* Ring: ``bench/ring_bench.py``'s speed section (build time at N=3/100/1000 and ns per
  lookup for every family), imported rather than duplicated.

Writes bench/results/memory.json and bench/results/memory.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    ROOT,
    Processes,
    children,
    env_number,
    free_port,
    lbproxy_cmd,
    lbproxy_env,
    lbproxy_revision,
    lbproxy_src,
    lbproxy_status,
    log,
    owned_processes,
    quick,
    rss_bytes,
    run_main,
    tag,
    wait_http,
    write_json,
)

MIB = 1024 * 1024


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def pss_bytes(pid: int) -> int:
    """Proportional set size (shared pages split between sharers); RSS if unavailable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return rss_bytes(pid)
    except OSError:
        return 0


def settle_rss(pid: int, seconds: float = 1.0) -> int:
    time.sleep(seconds)
    return rss_bytes(pid)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def helpers(pid: int, replicas: set[int]) -> dict[str, list[int]]:
    """The balancer's own helper processes: its children that are not replicas.

    ``ring_worker``: the ring build worker, a multiprocessing ``spawn`` child
    (``spawn_main`` in its command line); ``other``: the rest (multiprocessing's resource
    tracker). A replica (the process backend's children) is named by ``replicas``.
    """
    out: dict[str, list[int]] = {"ring_worker": [], "other": []}
    for child in children(pid):
        if child not in replicas:
            out["ring_worker" if "spawn_main" in _cmdline(child) else "other"].append(child)
    return out


def _rss_or_zero(pid: int) -> int:
    try:
        return rss_bytes(pid)
    except OSError:
        return 0  # gone meanwhile


def footprint(pid: int, replicas: set[int]) -> dict[str, int]:
    """The balancer's RSS, its ring worker's, and the total with every helper process: as
    a sum of RSS (pages the processes share, the interpreter's and numpy's libraries, count
    once per process) and as a sum of PSS (shared pages split between their sharers)."""
    kids = helpers(pid, replicas)
    everyone = [pid, *kids["ring_worker"], *kids["other"]]
    return {
        "rss": rss_bytes(pid),
        "worker_rss": sum(_rss_or_zero(p) for p in kids["ring_worker"]),
        "total_rss": sum(_rss_or_zero(p) for p in everyone),
        "total_pss": sum(pss_bytes(p) for p in everyone),
    }


def start_balancer(
    procs: Processes, replicas: int, tmp: Path, start_timeout: float
) -> tuple[subprocess.Popen[bytes], str, float]:
    port = free_port()
    log_path = tmp / f"lbproxy-{replicas}.log"
    log_file = log_path.open("wb")
    t0 = time.monotonic()
    proc = procs.start(
        f"lbproxy-{replicas}",
        lbproxy_cmd(port, replicas, "--start-timeout", str(start_timeout)),
        env=lbproxy_env(),
        cwd=lbproxy_src(),
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/rep", start_timeout + 30, proc, log_path)
    return proc, url, time.monotonic() - t0


def replica_pids(url: str) -> list[int]:
    status = lbproxy_status(url)
    return [int(r["backend_id"]) for r in status["replicas"] if r["backend_id"]]


# -- idle clients ----------------------------------------------------------------------------


async def _open_many(port: int, count: int) -> list[asyncio.StreamWriter]:
    writers: list[asyncio.StreamWriter] = []
    sem = asyncio.Semaphore(100)

    async def one() -> None:
        async with sem:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout=10
            )
            writers.append(writer)

    await asyncio.gather(*(one() for _ in range(count)))
    return writers


async def idle_clients(
    pid: int, port: int, count: int, look: Callable[[], dict[str, int]]
) -> dict[str, Any]:
    """RSS and fds of the balancer with ``count`` idle, then half-sent, client connections
    (``look``: the balancer's and its helpers' RSS at each step, ``footprint``)."""
    loop = asyncio.get_running_loop()
    base_rss = await loop.run_in_executor(None, settle_rss, pid, 0.5)
    base_fds = open_fds(pid)
    writers = await _open_many(port, count)
    await asyncio.sleep(1.5)
    idle_rss, idle_fds = rss_bytes(pid), open_fds(pid)
    idle_look = look()
    partial = (
        b"GET /home HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: 123456\r\n"
        b"User-Agent: lbproxy-bench-memory\r\n"
    )
    for w in writers:
        w.write(partial)
    await asyncio.gather(*(w.drain() for w in writers), return_exceptions=True)
    await asyncio.sleep(1.5)
    partial_rss, partial_fds = rss_bytes(pid), open_fds(pid)
    partial_look = look()
    for w in writers:
        w.close()
    await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
    await asyncio.sleep(2.0)
    closed_rss, closed_fds = rss_bytes(pid), open_fds(pid)
    closed_look = look()
    return {
        "connections": count,
        "look_idle": idle_look,
        "look_partial_request": partial_look,
        "look_after_close": closed_look,
        "rss_before": base_rss,
        "rss_idle": idle_rss,
        "rss_partial_request": partial_rss,
        "rss_after_close": closed_rss,
        "fds_before": base_fds,
        "fds_idle": idle_fds,
        "fds_partial_request": partial_fds,
        "fds_after_close": closed_fds,
        "per_idle_connection_bytes": (idle_rss - base_rss) / count,
        "per_partial_connection_bytes": (partial_rss - base_rss) / count,
    }


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def wrk_load(procs: Processes, url: str, seconds: int) -> None:
    if not shutil.which("wrk"):
        return
    lua = ROOT / "bench" / "request_id.lua"
    proc = procs.start(
        "wrk", ["wrk", "-t1", "-c64", f"-d{seconds}s", "-s", str(lua), url + "/home"]
    )
    try:
        proc.wait(timeout=seconds + 20)
    finally:
        procs.stop(proc)


# -- ring -----------------------------------------------------------------------------------


def ring_figures() -> dict[str, Any]:
    """ring_bench.py's speed section (someone else's script: imported, not copied)."""
    try:
        sys.path.insert(0, str(ROOT / "bench"))
        import ring_bench

        from lbproxy.ring import FAMILY_NAMES
    except ImportError as exc:
        return {"error": f"bench/ring_bench.py unavailable: {exc}"}
    buf = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(buf):
            ring_bench.section_speed(list(FAMILY_NAMES), ring_bench.request_ids(10_000, 2024))
    except Exception as exc:  # its API may change under us: report, do not fail the bench
        return {"error": f"ring_bench.section_speed failed: {exc!r}"}
    return {
        "source": "bench/ring_bench.py section_speed, 10,000 ids, seed 2024",
        "seconds": time.perf_counter() - t0,
        "markdown": buf.getvalue().strip(),
    }


# -- main -----------------------------------------------------------------------------------


def mib(b: float) -> str:
    return f"{b / MIB:.1f} MiB"


def _row(state: str, look: dict[str, int], fds: int) -> str:
    return (
        f"| {state} | {mib(look['rss'])} | {mib(look['worker_rss'])} | "
        f"{mib(look['total_rss'])} | {mib(look['total_pss'])} | {fds} |"
    )


def report(res: dict[str, Any]) -> str:
    small, big = res["small"], res["big"]
    idle = small["clients"]
    n = small["replicas"]
    lines = [
        "| balancer state | balancer RSS | ring worker RSS | total RSS | total PSS | open fds |",
        "|---|---:|---:|---:|---:|---:|",
        _row(f"N={n}, pool up, no traffic", small["look_up"], small["fds_up"]),
        _row(
            f"N={n}, {idle['connections']:,} idle client connections",
            idle["look_idle"],
            idle["fds_idle"],
        ),
        _row(
            f"N={n}, the same each holding a partial request",
            idle["look_partial_request"],
            idle["fds_partial_request"],
        ),
        _row(f"N={n}, after closing them", idle["look_after_close"], idle["fds_after_close"]),
    ]
    if "look_after_load" in small:
        lines.append(
            _row(
                f"N={n}, then after {small['load_seconds']} s of wrk -c64",
                small["look_after_load"],
                small["fds_after_load"],
            )
        )
    lines += [
        _row(f"N={big['replicas']}, pool up, no traffic", big["look_up"], big["fds_up"]),
        "",
        "Total: the balancer and its helper processes (the ring build worker, "
        "multiprocessing's resource tracker), replicas aside; RSS counts the pages they "
        "share once per process, PSS splits them.",
        f"Per idle connection: {idle['per_idle_connection_bytes'] / 1024:.1f} KiB; per "
        f"connection with a partial request: "
        f"{idle['per_partial_connection_bytes'] / 1024:.1f} KiB (RSS delta / connections).",
        f"N={big['replicas']}: the pool took {big['startup_s']:.1f} s to come up; the "
        f"{big['replicas']} replica processes together hold {mib(big['replicas_pss'])} PSS "
        f"({mib(big['replicas_pss'] / max(1, big['replicas']))} each); the balancer "
        f"grew {mib(big['rss_up'] - small['rss_up'])} over N={small['replicas']}.",
    ]
    ring = res.get("ring")
    if ring:
        lines += ["", "Ring (from bench/ring_bench.py):", ""]
        lines.append(ring.get("markdown") or ring.get("error", ""))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-ring", action="store_true", help="skip the ring figures")
    parser.add_argument(
        "--replicas-big", type=int, default=int(env_number("BENCH_BIG_N", 10 if quick() else 100))
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=int(env_number("BENCH_IDLE_CLIENTS", 200 if quick() else 1000)),
    )
    args = parser.parse_args()
    raise_fd_limit(args.clients + args.replicas_big * 4 + 1024)
    started = time.monotonic()
    res: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tag": tag(),
        "lbproxy_revision": lbproxy_revision(),
        "lbproxy_src": str(lbproxy_src()),
    }
    load_seconds = 2 if quick() else 5
    with owned_processes(env_number("BENCH_DEADLINE", 600)) as procs, contextlib.ExitStack() as st:
        import tempfile

        tmp = Path(st.enter_context(tempfile.TemporaryDirectory(prefix="lbproxy-mem-")))
        # N=3
        proc, url, startup = start_balancer(procs, 3, tmp, 30)
        port = int(url.rsplit(":", 1)[1])
        small: dict[str, Any] = {"replicas": 3, "startup_s": startup}
        small["rss_up"] = settle_rss(proc.pid)
        small["fds_up"] = open_fds(proc.pid)
        replicas = set(replica_pids(url))
        pid = proc.pid

        def look() -> dict[str, int]:
            return footprint(pid, replicas)

        small["look_up"] = look()
        log(
            f"N=3: balancer RSS {mib(small['rss_up'])}, ring worker "
            f"{mib(small['look_up']['worker_rss'])}, total {mib(small['look_up']['total_rss'])} "
            f"(PSS {mib(small['look_up']['total_pss'])})"
        )
        # Idle clients first, on a balancer that has served nothing: the RSS delta is then
        # theirs, not free lists left over from a load run.
        small["clients"] = asyncio.run(idle_clients(proc.pid, port, args.clients, look))
        c = small["clients"]
        log(
            f"N=3: {args.clients} idle clients {mib(c['rss_idle'])} (fds {c['fds_idle']}), "
            f"partial requests {mib(c['rss_partial_request'])}, closed {mib(c['rss_after_close'])}"
        )
        if shutil.which("wrk"):
            wrk_load(procs, url, load_seconds)
            small["load_seconds"] = load_seconds
            small["rss_after_load"] = settle_rss(proc.pid)
            small["fds_after_load"] = open_fds(proc.pid)
            small["look_after_load"] = look()
            log(f"N=3: after {load_seconds}s of load {mib(small['rss_after_load'])}")
        procs.stop(proc)
        # N=big
        n = args.replicas_big
        log(f"N={n}: starting {n} replica processes (this is the slow part)")
        try:
            proc, url, startup = start_balancer(procs, n, tmp, 240)
        except RuntimeError as exc:
            # Seen once: a replica lost the race for the free port the process backend had
            # picked for it and "exited during startup". Keep the log, try once more.
            kept = RESULTS / f"lbproxy-{n}-failed-start.log"
            RESULTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp / f"lbproxy-{n}.log", kept)
            log(
                f"N={n}: the pool failed to start ({str(exc).splitlines()[0]}); log kept in "
                f"{kept.relative_to(ROOT)}; retrying once"
            )
            res.setdefault("notes", []).append(f"N={n}: first start failed; see {kept.name}")
            proc, url, startup = start_balancer(procs, n, tmp, 240)
        big: dict[str, Any] = {"replicas": n, "startup_s": startup}
        big["rss_up"] = settle_rss(proc.pid, 2.0)
        big["fds_up"] = open_fds(proc.pid)
        pids = replica_pids(url)
        big["look_up"] = footprint(proc.pid, set(pids))
        big["replicas_running"] = len(pids)
        big["replicas_pss"] = sum(pss_bytes(p) for p in pids)
        log(
            f"N={n}: up in {startup:.1f}s; balancer RSS {mib(big['rss_up'])}, ring worker "
            f"{mib(big['look_up']['worker_rss'])}, total {mib(big['look_up']['total_rss'])}, "
            f"replicas PSS {mib(big['replicas_pss'])}"
        )
        procs.stop(proc, timeout=30)
        res["small"], res["big"] = small, big
    if not args.no_ring:
        log("ring figures (bench/ring_bench.py section_speed)")
        res["ring"] = ring_figures()
    res["elapsed_s"] = time.monotonic() - started
    text = report(res)
    res["markdown"] = text
    print()
    print(text)
    print(f"\nmemory bench took {res['elapsed_s']:.0f}s")
    write_json(RESULTS / "memory.json", res)
    write_json(RESULTS / f"memory-{tag()}.json", res)
    (RESULTS / f"memory-{tag()}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    run_main(main)
