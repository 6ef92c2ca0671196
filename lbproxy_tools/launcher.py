"""Start a real ``lbproxy serve`` process on a free loopback port, and stop it for sure.

Also the one home of the process and port helpers the tests and benchmarks share.
Used by the end-to-end tests, the recovery benchmark and ``lbproxy analyze``: each needs a
balancer it did not start in-process, so that what it measures is what users run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

# The process backend's own port picker, on purpose: it remembers the ports it handed out
# lately, and an in-process balancer under test launches its replicas from the same
# process, so the test's ports and the replicas' ports never collide.
from lbproxy.backends.process import free_loopback_port

__all__ = [
    "ComposeStack",
    "RunningBalancer",
    "checkout_revision",
    "clean_env",
    "compose_stack",
    "die_with_parent",
    "docker_engine_answers",
    "free_loopback_port",
    "pid_alive",
    "run_balancer",
    "serve_command",
    "wait_http",
]


@dataclass
class RunningBalancer:
    proc: subprocess.Popen[bytes]
    url: str

    async def status(self, session: aiohttp.ClientSession) -> dict[str, object]:
        async with session.get(self.url + "/lbproxy/status") as resp:
            body: dict[str, object] = (await resp.json())["message"]
            return body

    async def replica_pids(self, session: aiohttp.ClientSession) -> dict[str, int]:
        status = await self.status(session)
        replicas = status["replicas"]
        assert isinstance(replicas, list)
        return {
            r["name"]: int(r["backend_id"])
            for r in replicas
            if r["backend_id"] and r["state"] == "up"
        }


def wait_http(
    url: str,
    timeout: float = 20.0,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Until ``url`` answers 200; fail early when ``proc`` (the server) exits.

    ``log_path``: the server's log, whose tail goes into the error when it does not come up.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process for {url} exited with code {proc.returncode}" + _tail(log_path)
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
                last = resp.status
        except urllib.error.HTTPError as exc:
            last = exc.code
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(
        f"{url} did not answer 200 within {timeout:g}s (last: {last})" + _tail(log_path)
    )


def _tail(path: Path | None, chars: int = 2000) -> str:
    if path is None:
        return ""
    try:
        return f"\n--- {path.name} (tail) ---\n" + path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child (preexec_fn)
    """Ask Linux to SIGTERM this child when its parent dies: nothing a test or bench starts
    outlives it, even when the runner is killed with SIGKILL (a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def serve_command(port: int, replicas: int, *extra: str, python: str = sys.executable) -> list[str]:
    """The ``lbproxy serve`` command line for a process-backend balancer on 127.0.0.1."""
    return [
        python,
        "-m",
        "lbproxy",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--replicas",
        str(replicas),
        "--backend",
        "process",
        *extra,
    ]


def clean_env() -> dict[str, str]:
    """The environment minus LBPROXY_* settings, so a developer's shell cannot skew a run."""
    return {k: v for k, v in os.environ.items() if not k.startswith("LBPROXY_")}


@contextlib.contextmanager
def run_balancer(
    *extra: str,
    replicas: int = 3,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    fast_heartbeat: bool = True,
    up_timeout: float = 20.0,
) -> Iterator[RunningBalancer]:
    """Start ``lbproxy serve`` on a free loopback port; SIGTERM it (then SIGKILL) on exit.

    ``env``: variables added to the clean environment (the replicas inherit them, e.g.
    ``SERVER_DELAY_MS``). ``fast_heartbeat``: heartbeat every 0.2 s (timeout 0.5 s) so a
    test sees deaths and starts sooner; False keeps the defaults a user gets (A-5 measures
    those).
    """
    port = port or free_loopback_port()
    heartbeat = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "0.5")
    cmd = serve_command(
        port,
        replicas,
        *(heartbeat if fast_heartbeat else ()),
        "--log-level",
        "warning",
        *extra,
    )
    proc = subprocess.Popen(cmd, env=clean_env() | dict(env or {}), preexec_fn=die_with_parent)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/rep", timeout=up_timeout, proc=proc)
        yield RunningBalancer(proc, url)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"
    return True


def compose_command() -> list[str]:
    """``docker compose`` (v2) when present, else the v1 ``docker-compose`` binary."""
    import shutil

    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("neither `docker compose` nor `docker-compose` is installed")


@dataclass
class ComposeStack:
    """A running ``compose.yaml`` stack under its own project, pool, network and port."""

    url: str
    project: str
    pool: str
    network: str
    compose: list[str]
    env: dict[str, str]
    root: str

    def run(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            [*self.compose, "-p", self.project, "-f", "compose.yaml", *args],
            capture_output=True,
            text=True,
            cwd=self.root,
            env=self.env,
            timeout=600,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def replicas(self, *, all_states: bool = False) -> dict[str, str]:
        """name -> container id of this pool's replicas, as the engine lists them."""
        args = ["docker", "ps", "--no-trunc", "--filter", f"label=lbproxy.control.pool={self.pool}"]
        if all_states:
            args.append("-a")
        out = subprocess.run(
            [*args, "--format", '{{.Label "lbproxy.replica"}} {{.ID}}'],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())

    def lb_container(self) -> str:
        return self.run("ps", "-q", "lb").strip()

    def admin_headers(self) -> dict[str, str]:
        """The bearer header for /add and /rm: the token compose.yaml generated for the stack."""
        token = self.run("exec", "-T", "lb", "cat", "/run/lbproxy-admin/token").strip()
        return {"Authorization": f"Bearer {token}"}

    def remove_leftovers(self) -> None:
        """Force-remove this pool's containers and network (a crashed run's remains)."""
        ids = list(self.replicas(all_states=True).values())
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)
        subprocess.run(["docker", "network", "rm", self.network], capture_output=True, check=False)


@contextlib.contextmanager
def compose_stack(
    root: str,
    *,
    project: str = "lbproxy-e2e",
    replicas: int = 3,
    extra_env: dict[str, str] | None = None,
    up_timeout: float = 90.0,
) -> Iterator[ComposeStack]:
    """``compose up -d lb`` (images must exist: scripts/ensure-images.sh), then ``down``.

    The stack publishes the balancer on a free 127.0.0.1 port; its pool, network and
    project are named after ``project`` so it never touches a user's own stack.
    """
    port = free_loopback_port()
    env = dict(os.environ)
    env.update(
        LBPROXY_HOST_PORT=str(port),
        LBPROXY_POOL=project,
        LBPROXY_NETWORK=f"{project}-net",
        LBPROXY_REPLICAS=str(replicas),
        LBPROXY_PIP_OPTS="--no-index",
    )
    env.update(extra_env or {})
    stack = ComposeStack(
        url=f"http://127.0.0.1:{port}",
        project=project,
        pool=project,
        network=f"{project}-net",
        compose=compose_command(),
        env=env,
        root=root,
    )
    stack.remove_leftovers()
    try:
        stack.run("up", "-d", "--no-build", "lb")
        wait_http(stack.url + "/rep", timeout=up_timeout)
        yield stack
    finally:
        # -v: the stack's admin-token volume goes too
        stack.run("down", "-v", "--remove-orphans", "--timeout", "30", check=False)


def docker_engine_answers() -> bool:
    """True when ``docker info`` succeeds: the Docker tests must then run, not skip."""
    import shutil

    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def checkout_revision(tree: Path) -> str:
    """``tree``'s commit, + "-dirty" with edits under lbproxy/ or server_app/ (what a
    measurement ran), or "unknown" outside a git checkout. Recorded by the bench and the
    analysis next to their figures."""
    try:
        head = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--", "lbproxy", "server_app"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")
