"""Shared plumbing for the bench scripts: process ownership, /proc readings, versions.

Every process a bench script starts goes through ``Processes.start``: it gets its own
session (so a whole tree can be signalled), the parent-death signal (so it dies with the
script even on SIGKILL), and it is stopped, SIGTERM then SIGKILL, when the script exits for
any reason (normal end, exception, Ctrl-C, SIGTERM, SIGHUP, the overall deadline).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
sys.path.insert(0, str(ROOT))

# The process and port helpers have one home, lbproxy_tools.launcher; the bench scripts
# import them from here under their bench names.
from lbproxy_tools.launcher import (  # noqa: E402
    checkout_revision,
    clean_env,
    die_with_parent,
    serve_command,
    wait_http,
)
from lbproxy_tools.launcher import free_loopback_port as free_port  # noqa: E402

__all__ = ["free_port", "wait_http"]  # re-exported for http_bench.py and memory.py

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def quick() -> bool:
    return os.environ.get("BENCH_QUICK", "") not in ("", "0", "false", "no")


def env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw else default


def pin(pid: int, cpus: set[int] | None) -> None:
    """Restrict ``pid`` (0: this process) to ``cpus``; no-op when ``cpus`` is None."""
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)


class Deadline(Exception):
    """The script ran past its overall time bound."""


class Processes:
    """Owns every child a bench script starts; ``stop_all`` ends them, newest first."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdout: Any = subprocess.DEVNULL,
        stderr: Any = None,
        cwd: Path | None = None,
        cpus: set[int] | None = None,
    ) -> subprocess.Popen[bytes]:
        def setup() -> None:  # pragma: no cover - runs in the child
            die_with_parent()
            pin(0, cpus)

        proc = subprocess.Popen(
            list(cmd),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=setup,
        )
        self._procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if proc.poll() is None:
            # The whole session: nginx's workers, anything a child forked.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Leftovers in the session whose leader already exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        self._procs = [(n, p) for n, p in self._procs if p is not proc]

    def stop_all(self) -> None:
        for _name, proc in reversed(list(self._procs)):
            self.stop(proc)


@contextlib.contextmanager
def owned_processes(deadline_s: float) -> Iterator[Processes]:
    """A ``Processes`` that is cleaned up on any exit; SIGTERM/SIGHUP/deadline raise."""
    procs = Processes()

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    def on_alarm(_signum: int, _frame: object) -> None:
        raise Deadline(f"the bench ran past its {deadline_s:.0f}s bound")

    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python keeps that.
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    old_alarm = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(deadline_s))
    try:
        yield procs
    finally:
        signal.alarm(0)
        # A second Ctrl-C (or SIGTERM) during cleanup must not leave children behind.
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        try:
            procs.stop_all()
        finally:
            signal.signal(signal.SIGALRM, old_alarm)
            for s, h in old.items():
                signal.signal(s, h)


# -- /proc readings ------------------------------------------------------------------------


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process, in seconds ((0, 0) when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it is gone)."""
    user, system = cpu_times(pid)
    return user + system


def involuntary_switches(pid: int) -> int:
    """How often the scheduler took the CPU away from ``pid`` (it wanted to keep running)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    busy, total, _irq = machine_cpu_detail()
    return busy, total


def machine_cpu_detail() -> tuple[float, float, float]:
    """(busy, total, irq + softirq) jiffies over all CPUs from /proc/stat.

    With IRQ time accounting, the loopback TCP receive path that runs in softirq context is
    counted here and not in any process's stime.
    """
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    irq = parts[5] + parts[6] if len(parts) > 6 else 0
    return float(total - idle), float(total), float(irq)


# -- HTTP helpers ---------------------------------------------------------------------------


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def lbproxy_status(base: str) -> dict[str, Any]:
    status, body = http_get(base + "/lbproxy/status", timeout=5.0)
    if status != 200:
        raise RuntimeError(f"{base}/lbproxy/status answered {status}")
    message: dict[str, Any] = json.loads(body)["message"]
    return message


def lbproxy_cmd(port: int, replicas: int, *extra: str) -> list[str]:
    return serve_command(
        port, replicas, "--loop", "uvloop", "--log-level", "warning", *extra, python=PYTHON
    )


def tag() -> str:
    """BENCH_TAG names a run's profile and result files (``profile-<tag>.svg``)."""
    raw = os.environ.get("BENCH_TAG", "") or "latest"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", raw)


def lbproxy_src() -> Path:
    """The lbproxy tree to measure: this checkout, or BENCH_LBPROXY_SRC (e.g. an older commit
    unpacked with ``git archive``) to compare before/after with the same harness."""
    return Path(os.environ.get("BENCH_LBPROXY_SRC") or ROOT).resolve()


def lbproxy_env() -> dict[str, str]:
    env = clean_env()
    src = lbproxy_src()
    if src != ROOT:
        # Ahead of the venv's editable install, for the balancer and the replicas it spawns.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH")) if p)
    return env


def lbproxy_revision() -> str:
    """Commit of the measured tree (+ "-dirty" when lbproxy/ or server_app/ have edits)."""
    return os.environ.get("BENCH_LBPROXY_REV", "") or checkout_revision(lbproxy_src())


# -- the machine ----------------------------------------------------------------------------


def _first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    wrk = _first_line(["wrk", "-v"])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "aiohttp": _package_version("aiohttp"),
        "uvloop": _package_version("uvloop"),
        "multidict": _package_version("multidict"),
        "yarl": _package_version("yarl"),
        "haproxy": re.sub(r" - https?://\S+", "", _first_line([haproxy, "-v"])),
        "nginx": _first_line([nginx, "-v"]).replace("nginx version: ", ""),
        "wrk": " ".join(wrk.split()[:2]),
    }


def _jsonable(obj: object) -> object:
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    return str(obj)


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)


def run_main(main: Callable[[], int]) -> None:
    """Run a bench script's ``main``; Ctrl-C and the time bound end it with a clear line."""
    try:
        sys.exit(main())
    except KeyboardInterrupt as exc:
        print(
            f"\nbench: interrupted ({exc or 'Ctrl-C'}); every process it started is stopped",
            file=sys.stderr,
        )
        sys.exit(130)
    except Deadline as exc:
        print(f"\nbench: {exc}; every process it started is stopped", file=sys.stderr)
        sys.exit(124)
