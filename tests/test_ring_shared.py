"""Rings come back from the build worker through shared memory, and nothing is left behind.

The worker writes a Maglev ring's arrays into a segment the builder named; the balancer
maps it, unlinks it at once and uses the arrays in place (no unpickling of 8-25 MiB on the
event loop, issue 10). These tests pin the ownership rules: a mapped ring keeps its memory
alive for as long as it (or a ring derived from it) is used, and no segment outlives a
build, whether it is taken, cancelled, broken by a worker crash or cut by a shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import mmap
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from lbproxy.ring import make_family, offload, shared
from lbproxy.ring.base import Ring
from lbproxy.ring.maglev import MaglevFamily, MaglevRing
from lbproxy.ring.offload import RingBuilder
from tests.conftest import wait_for

pytestmark = pytest.mark.process  # builds run in the worker process

KEYS = [str(k) for k in range(100_000, 104_000)]
SMALL = 65_537


def _ours() -> list[str]:
    """Segments this test process owns (other sessions on the machine have their own pid)."""
    prefix = f"{shared.PREFIX}{os.getpid()}-"
    return sorted(p.name for p in shared.segment_dir().iterdir() if p.name.startswith(prefix))


def _members(n: int) -> dict[str, int]:
    return {f"S{i}": i for i in range(1, n + 1)}


async def test_a_shared_ring_is_used_in_place_and_outlives_its_segment_name() -> None:
    family = make_family("maglev", slots=SMALL)
    ring = await RingBuilder().build(family, _members(5))
    assert isinstance(ring, MaglevRing)
    keep = ring._keep
    assert isinstance(keep, mmap.mmap)  # the arrays are views of the mapping: no copy
    assert isinstance(ring._table, memoryview) and ring._table.readonly
    assert _ours() == []  # unlinked as soon as it was mapped
    reference = family.build(_members(5))
    assert isinstance(reference, MaglevRing)
    assert all(ring.lookup(k) == reference.lookup(k) for k in KEYS)
    assert ring.shares() == reference.shares()
    # A ring derived from it shares the mapping; the mapping lives as long as either does.
    derived = ring.without({"S2"})
    assert derived is not None and derived._keep is keep
    del ring, keep
    gc.collect()
    expected = reference.without({"S2"})
    assert expected is not None
    assert all(derived.lookup(k) == expected.lookup(k) for k in KEYS)


async def test_weighted_and_large_rings_round_trip() -> None:
    """Both table widths (2-byte entries up to 127 replicas, 4-byte beyond) and weights."""
    family = make_family("maglev", slots=SMALL)
    builder = RingBuilder()
    weights = {"S1": 3, "S2": 1, "S3": 2}
    small = await builder.build(family, _members(3), weights)
    assert all(small.lookup(k) == family.build(_members(3), weights).lookup(k) for k in KEYS)  # type: ignore[call-arg]
    wide = await builder.build(family, _members(300))
    assert isinstance(wide, MaglevRing) and wide._table.itemsize == 4
    reference = family.build(_members(300))
    assert all(wide.lookup(k) == reference.lookup(k) for k in KEYS)
    assert _ours() == []


async def test_a_cancelled_build_leaves_no_segment() -> None:
    """The caller gives up while the worker builds: the segment the worker then writes is
    removed when its result arrives, unmapped."""
    family = make_family("maglev")  # the default table: the build takes a while
    builder = RingBuilder()
    build = asyncio.ensure_future(builder.build(family, _members(50)))
    await wait_for(lambda: bool(getattr(offload._executor, "_pending_work_items", None)))
    build.cancel()
    with pytest.raises(asyncio.CancelledError):
        await build
    # The worker finishes the build it had started and writes its segment; then it goes.
    await wait_for(lambda: not offload._executor._pending_work_items, timeout=60)  # type: ignore[union-attr]
    await wait_for(lambda: not offload._segments, timeout=5)
    assert _ours() == []
    # The worker is fine: the next build is taken normally.
    ring = await builder.build(make_family("maglev", slots=SMALL), _members(2))
    assert ring.names == {"S1", "S2"}
    assert _ours() == []


class _CrashAfterWriting(MaglevFamily):
    """A family whose ring writes its segment, then kills the worker before it can answer."""

    def build(self, members: Mapping[str, int], weights: Mapping[str, int] | None = None) -> Ring:
        return _Crashing(super().build(members, weights))  # type: ignore[return-value]

    def build_with_state(
        self,
        previous: object,
        members: Mapping[str, int],
        weights: Mapping[str, int] | None = None,
    ) -> tuple[Ring, object]:
        """The worker's entry point (it keeps the state between builds): crashes the same."""
        ring, state = super().build_with_state(previous, members, weights)
        return _Crashing(ring), state  # type: ignore[return-value]


class _Crashing:
    def __init__(self, ring: Ring) -> None:
        self.ring = ring

    def share(self, segment: str) -> object:
        assert isinstance(self.ring, MaglevRing)
        self.ring.share(segment)
        assert (shared.segment_dir() / segment).exists()
        os._exit(3)  # the worker dies with a segment written and not yet handed over


async def test_a_worker_that_dies_after_writing_leaves_no_segment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    family = _CrashAfterWriting("maglev", slots=SMALL)
    with pytest.raises(BrokenProcessPool):
        await RingBuilder().build(family, _members(3))  # restarted once, dies again
    assert "worker died" in caplog.text
    await wait_for(lambda: not offload._segments, timeout=5)
    assert _ours() == []
    ring = await RingBuilder().build(make_family("maglev", slots=SMALL), _members(2))
    assert ring.names == {"S1", "S2"}


async def test_shutdown_during_builds_leaves_no_segment() -> None:
    family = make_family("maglev")
    builder = RingBuilder()
    builds = [asyncio.ensure_future(builder.build(family, _members(n))) for n in (40, 41)]
    await wait_for(lambda: bool(getattr(offload._executor, "_pending_work_items", None)))
    offload.shutdown()
    try:
        for build in builds:
            with pytest.raises(asyncio.CancelledError):
                await build
        assert not offload._segments
        assert _ours() == []
    finally:
        offload.reopen()


def test_segments_of_dead_processes_are_swept(tmp_path: Path) -> None:
    """A balancer SIGKILLed between the worker's write and its own map leaves a segment;
    the next builder removes it (its pid no longer runs). A live pid's segment stays."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    stale = shared.segment_dir() / shared.new_name(dead_pid)
    live = shared.segment_dir() / shared.new_name()
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    try:
        assert shared.sweep_stale() >= 1
        assert not stale.exists() and live.exists()
    finally:
        shared.discard(stale.name)
        shared.discard(live.name)


def test_a_full_ram_disk_falls_back_to_the_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker's /dev/shm is 64 MiB: when the segment cannot be written the worker returns
    the ring itself (pickled), and the half-written segment is gone."""

    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    family = make_family("maglev", slots=SMALL)
    name = shared.new_name()
    result = offload.build_shared(family, _members(3), None, name)
    assert isinstance(result, MaglevRing)
    assert not (shared.segment_dir() / name).exists()


async def test_a_balancer_leaves_no_segment_after_shutdown(tmp_path: Path) -> None:
    """Real ``lbproxy serve`` (default table): an /add takes its ring through shared memory;
    a SIGTERM while the next /add is under way leaves no segment of the balancer behind."""
    import aiohttp

    from lbproxy_tools.launcher import clean_env, free_loopback_port, serve_command, wait_http

    port = free_loopback_port()
    cmd = serve_command(port, 1, "--log-level", "warning")
    with (tmp_path / "balancer.log").open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(*cmd, env=clean_env(), stderr=log_file)
    url = f"http://127.0.0.1:{port}"
    prefix = f"{shared.PREFIX}{proc.pid}-"

    def leftovers() -> list[str]:
        return [p.name for p in shared.segment_dir().iterdir() if p.name.startswith(prefix)]

    try:
        await asyncio.to_thread(wait_http, url + "/rep")
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/add", json={"n": 1, "hostnames": ["S2"]}) as r:
                assert r.status == 200
            assert leftovers() == []  # mapped and unlinked
            pending = asyncio.ensure_future(
                session.post(url + "/add", json={"n": 1, "hostnames": ["S3"]})
            )
            while True:  # S3 has joined (launching, or its ring being built)
                async with session.get(url + "/lbproxy/status") as r:
                    names = [rep["name"] for rep in (await r.json())["message"]["replicas"]]
                if "S3" in names:
                    break
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 60) == 0
            with contextlib.suppress(aiohttp.ClientError):
                (await pending).release()
        assert leftovers() == []
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


#: A table size no other test builds, so the worker's kept state for it is this test's.
_DERIVE_SLOTS = 10_007


class _MustDerive(MaglevFamily):
    """Refuses (in the worker) a build that did not derive from a kept state."""

    def build_with_state(
        self,
        previous: object,
        members: Mapping[str, int],
        weights: Mapping[str, int] | None = None,
    ) -> tuple[Ring, object]:
        ring, state = super().build_with_state(previous, members, weights)
        if getattr(state, "how", None) != "derived":
            raise AssertionError(f"the worker built {len(members)} members in full")
        return ring, state


async def test_the_worker_derives_additions_and_they_equal_a_build() -> None:
    """Issue 10: the worker derives the next ring from the last one it built; through the
    shared-memory hand-back it is the full build's equal, table and pair counts."""
    family = _MustDerive("maglev", slots=_DERIVE_SLOTS)
    builder = RingBuilder()
    await builder.build(MaglevFamily("maglev", slots=_DERIVE_SLOTS), _members(10))
    steps: list[tuple[dict[str, int], dict[str, int] | None]] = [
        (_members(11), None),  # an addition
        (_members(11), {"S3": 2}),  # a weight change
        ({n: i for n, i in _members(12).items() if n != "S5"}, {"S3": 2}),  # one in, one out
    ]
    for members, weights in steps:
        ring = await builder.build(family, members, weights)
        reference = family.build(members, weights)
        assert isinstance(ring, MaglevRing) and isinstance(reference, MaglevRing)
        assert isinstance(ring._keep, mmap.mmap)  # it came back through shared memory
        assert bytes(ring._table) == bytes(reference._table)
        assert ring._pairs is not None and reference._pairs is not None
        assert [bytes(a) for a in ring._pairs] == [bytes(a) for a in reference._pairs]
    assert _ours() == []
