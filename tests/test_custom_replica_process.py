"""``--replica-cmd`` on real processes: substitution, environment, and one process group per
replica that dies with it, whether the replica is killed -9 or the balancer is.

The commands deliberately keep the real server a grandchild (``sh -c '...; true'`` stops the
shell from exec'ing it), the case a parent-death signal on the direct child alone misses.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from lbproxy.backends.command import wrapper_script
from lbproxy_tools.launcher import pid_alive, run_balancer

pytestmark = [pytest.mark.process, pytest.mark.slow]

PY = shlex.quote(sys.executable)


def group_members(pgid: int) -> set[int]:
    """Live pids whose process group is ``pgid`` (zombies excluded)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.add(int(entry))
    return found


async def wait_until(predicate: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def test_wrapper_passes_the_exit_status_and_runs_compound_commands() -> None:
    script = wrapper_script("echo one; echo two && exit 3")
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=10)
    assert (done.returncode, done.stdout) == (3, "one\ntwo\n")


async def test_template_placeholders_and_environment_reach_the_replica() -> None:
    # The shell sets SERVER_ID from --replica-env and {ring_id}, so /home proves both, and
    # that the replica read PORT from the environment lbproxy gave it.
    template = f"SERVER_ID=$GREETING-{{ring_id}} exec {PY} -m server_app"
    with run_balancer(
        "--replica-cmd", template, "--replica-env", "GREETING=custom", replicas=2
    ) as lb:
        async with aiohttp.ClientSession() as s:
            seen = set()
            for rid in range(100000, 100040):
                async with s.get(lb.url + "/home", headers={"X-Request-ID": str(rid)}) as r:
                    assert r.status == 200
                    seen.add((await r.json())["message"])
    assert seen == {"Hello from Server: custom-1", "Hello from Server: custom-2"}


async def test_kill_9_of_a_replica_takes_its_whole_group_and_is_replaced() -> None:
    template = f"sh -c '{PY} -m server_app; true'"
    with run_balancer("--replica-cmd", template, replicas=3) as lb:
        async with aiohttp.ClientSession() as s:
            before = await lb.replica_pids(s)
            victim = before["Server 2"]
            members = group_members(victim)
            assert len(members) >= 3, members  # wrapper sh, its job, sh -c, the server
            os.kill(victim, signal.SIGKILL)
            await wait_until(lambda: not any(pid_alive(p) for p in members))

            async def back() -> dict[str, int]:
                return await lb.replica_pids(s)

            deadline = time.monotonic() + 15
            while True:
                now = await back()
                if len(now) == 3 and now.get("Server 2", victim) != victim:
                    break
                assert time.monotonic() < deadline, now
                await asyncio.sleep(0.05)
            async with s.get(lb.url + "/home", headers={"X-Request-ID": "123456"}) as r:
                assert r.status == 200


def test_replica_groups_do_not_outlive_a_sigkilled_balancer() -> None:
    template = f"sh -c '{PY} -m http.server {{port}} --bind 127.0.0.1; true'"

    async def pids(url: str) -> list[int]:
        async with aiohttp.ClientSession() as s, s.get(url + "/lbproxy/status") as r:
            return [int(x["backend_id"]) for x in (await r.json())["message"]["replicas"]]

    with run_balancer("--replica-cmd", template, "--health-path", "/", replicas=2) as lb:
        leaders = asyncio.run(pids(lb.url))
        members = set().union(*(group_members(p) for p in leaders))
        assert len(members) >= 2 * 3, members
        lb.proc.kill()
        lb.proc.wait()
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in members) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(pid_alive(p) for p in members), "a replica's group outlived the balancer"


def test_a_replica_that_ignores_sigterm_does_not_outlive_a_sigkilled_balancer() -> None:
    # The parent-death signal is SIGTERM (a graceful stop when it can be one); a command that
    # ignores it must still go, as systemd's KillMode escalates to SIGKILL after its
    # TimeoutStopSec: the wrapper kills the group once --stop-timeout has passed.
    template = f"sh -c 'trap \"\" TERM; {PY} -m http.server {{port}} --bind 127.0.0.1; true'"

    async def pids(url: str) -> list[int]:
        async with aiohttp.ClientSession() as s, s.get(url + "/lbproxy/status") as r:
            return [int(x["backend_id"]) for x in (await r.json())["message"]["replicas"]]

    with run_balancer(
        "--replica-cmd", template, "--health-path", "/", "--stop-timeout", "1", replicas=1
    ) as lb:
        leaders = asyncio.run(pids(lb.url))
        members = set().union(*(group_members(p) for p in leaders))
        assert len(members) >= 3, members
        lb.proc.kill()
        lb.proc.wait()
        deadline = time.monotonic() + 15
        while any(pid_alive(p) for p in members) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = [p for p in members if pid_alive(p)]
        for pid in alive:  # leave nothing behind, whatever the outcome
            os.kill(pid, signal.SIGKILL)
        assert not alive, "a replica that ignores SIGTERM outlived the balancer"
