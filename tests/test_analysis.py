"""`lbproxy analyze`: its statistics, its report and charts, and one small end-to-end run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbproxy_tools.analysis import geometry, report
from lbproxy_tools.analysis.runner import (
    Analysis,
    Exchange,
    KillDrill,
    Options,
    Point,
    TimelineEvent,
    chi2_sf,
)

pytestmark = pytest.mark.unit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path: Path) -> None:
    """A PNG matplotlib can read back, and not a blank canvas."""
    import matplotlib.image
    import numpy as np

    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100, path
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 1, f"{path} is blank"


def section(text: str, title: str) -> str:
    """The body of the report section whose heading starts with ``title`` (heading excluded)."""
    match = re.search(rf"^## {re.escape(title)}[^\n]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def assert_has_numbers(body: str) -> None:
    assert re.search(r"\d{2,}", body), body[:300]


# -- statistics and geometry -----------------------------------------------------------------


@pytest.mark.parametrize(("x", "k"), [(3.841, 1), (5.991, 2), (7.815, 3), (9.488, 4), (11.070, 5)])
def test_chi2_survival_matches_the_tables(x: float, k: int) -> None:
    assert chi2_sf(x, k) == pytest.approx(0.05, abs=2e-4)


def test_chi2_edges() -> None:
    assert chi2_sf(0.0, 3) == 1.0
    assert chi2_sf(1000.0, 2) < 1e-100


def test_point_statistics() -> None:
    p = Point(
        "x",
        2,
        ["A", "B"],
        {"A": 60, "B": 40},
        {"A": 60, "B": 40},
        {"A": 0.5, "B": 0.5},
        {},
        0,
        1.0,
        1.0,
        1.0,
        1.0,
    )
    assert (p.mean, p.std, p.min, p.max, p.imbalance) == (50, 10, 40, 60, 1.2)
    assert p.chi2 == pytest.approx(4.0)
    assert p.p_value == pytest.approx(chi2_sf(4.0, 1))
    assert p.counters_agree


def test_seed_circle_concentrates_on_the_lowest_id() -> None:
    names = ["Server 1", "Server 2", "Server 3"]
    seed = geometry.circle("seed", names)
    assert seed.placements["Server 1"][:3] == (26, 29, 36)
    assert seed.owner.count("Server 1") == 494  # 96.5% of 512
    assert geometry.phi_offsets()[:4] == [25, 28, 35, 46]
    assert geometry.h_residues() == 512  # H is a bijection mod 512
    alt = geometry.circle("seed-alt", names)
    assert max(alt.shares().values()) < 0.5
    assert sum(length for _, length, _ in alt.arcs()) == 512


# -- the report from a synthetic run (no balancer) ---------------------------------------------


def _point(family: str, n: int, counts: list[int], shares: list[float]) -> Point:
    names = [f"Server {k + 1}" for k in range(n)]
    c = dict(zip(names, counts, strict=True))
    return Point(
        family,
        n,
        names,
        c,
        dict(c),
        dict(zip(names, shares, strict=True)),
        {},
        0,
        1500.0,
        2.0,
        10.0,
        30.0,
    )


def _synthetic() -> Analysis:
    opts = Options(requests=1000, families=["maglev", "seed"], min_n=2, max_n=3)
    a = Analysis(opts, "launched", time.time() - 5, finished=time.time())
    a.default_family = "maglev"
    a.environment = {"cpus": "2", "python": "3.11"}
    a.points = [
        _point("maglev", 2, [510, 490], [0.5, 0.5]),
        _point("maglev", 3, [340, 330, 330], [1 / 3, 1 / 3, 1 / 3]),
        _point("seed", 2, [985, 15], [0.982, 0.018]),
        _point("seed", 3, [964, 18, 18], [0.9648, 0.0176, 0.0176]),
    ]
    a.endpoints = [
        Exchange("the replicas", "GET", "/rep", None, {}, 200, '{"message": {}}', {}),
        Exchange("bad add", "POST", "/add", "n=2", {}, 400, '{"status": "failure"}', {}),
    ]
    kill = 1000.0
    events = [
        TimelineEvent(10, "died", "Server 2", "killed by signal 9", 3.0),
        TimelineEvent(11, "removed_from_ring", "Server 2", "died", 25.0),
        TimelineEvent(12, "replacing", "Server 2", "attempt 1", 26.0),
        TimelineEvent(13, "launched", "Server 2", "pid", 30.0),
        TimelineEvent(14, "up", "Server 2", "url", 520.0),
        TimelineEvent(15, "first_response", "Server 2", "status 200", 530.0),
    ]
    requests = [
        (float(ms), 2.0, "ok", f"Server {1 + (ms // 10) % 3}") for ms in range(-1000, 1500, 10)
    ]
    a.kill = KillDrill(
        performed=True,
        note="",
        family="maglev",
        victim="Server 2",
        victim_id="123",
        kill_time=kill,
        kill_method="SIGKILL to pid 123",
        rate=400.0,
        concurrency=20,
        events=events,
        milestones={
            "killed": 0.0,
            "detected": 3.0,
            "removed from ring": 25.0,
            "replacement launched": 30.0,
            "replacement up": 520.0,
            "replacement first response": 530.0,
        },
        sent=250,
        ok=250,
        failed=0,
        failed_in_window=0,
        sent_in_window=53,
        phases={"answered before the kill": {"Server 1": 30}, "answered after up": {"Server 2": 9}},
        requests=requests,
        replicas_after=["Server 1", "Server 2", "Server 3"],
        new_id="456",
        latency_before_ms=4.0,
        latency_after_ms=40.0,
        idle_launch_to_up_ms=[400.0, 450.0],
    )
    return a


@pytest.mark.slow  # six matplotlib figures: a few seconds
def test_report_and_charts_from_a_synthetic_run(tmp_path: Path) -> None:
    path = report.write(_synthetic(), tmp_path)
    text = path.read_text()
    for title in ("A-1", "A-2", "A-3", "A-4"):
        assert_has_numbers(section(text, title))
    assert "964" in section(text, "A-1") and "96.5%" in section(text, "A-1")
    assert "0 of 53" in section(text, "A-3")
    pngs = sorted(tmp_path.glob("*.png"))
    assert {p.name for p in pngs} == set(report.CHARTS.values())
    for png in pngs:
        assert_real_png(png)
        assert f"]({png.name})" in text
    assert json.loads((tmp_path / "results.json").read_text())["points"][0]["family"] == "maglev"


# -- end to end --------------------------------------------------------------------------------


def results_at_3(out: Path) -> list[dict[str, object]]:
    points = json.loads((out / "results.json").read_text())["points"]
    return [p for p in points if p["n"] == 3]


def _analyze(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lbproxy", "analyze", "--out", str(out), "-q", *extra],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.process
@pytest.mark.slow
def test_analyze_end_to_end_small(tmp_path: Path) -> None:
    args = ("--requests", "300", "--max-n", "3", "--families", "maglev,seed", "--seed", "7")
    done = _analyze(tmp_path / "a", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "a"
    text = (out / "report.md").read_text()
    assert "lbproxy analyze --out" in text and "seed **7**" in text
    for title in ("A-1", "A-2", "A-3", "A-4"):
        assert_has_numbers(section(text, title))
    a1 = section(text, "A-1")
    for p in results_at_3(out):
        for name, count in p["counts"].items():
            assert f"| {name} |" in a1 and f"{count:,}" in a1
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 5
    for png in pngs:
        assert_real_png(png)
    results = json.loads((out / "results.json").read_text())
    for p in results["points"]:
        assert sum(p["counts"].values()) == 300, p
        assert p["errors"] == {}
        assert p["counts"] == p["served"]
    seed3 = next(p for p in results["points"] if p["family"] == "seed" and p["n"] == 3)
    assert seed3["counts"]["Server 1"] > 250  # the reference ring's concentration
    kill = results["kill"]
    assert kill["performed"] and kill["failed_in_window"] == 0
    assert kill["milestones"]["replacement first response"] is not None
    a3 = section(text, "A-3")
    for path in ("/rep", "/add", "/rm", "/home", "/heartbeat", "/other"):
        assert f"$LB{path}" in a3
    assert "Length of hostname list is more than newly added instances" in a3

    # the same seed gives the same counts on a fresh run (new balancers, new processes)
    again = _analyze(tmp_path / "b", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads((tmp_path / "b" / "results.json").read_text())
    assert [(p["family"], p["n"], p["counts"]) for p in rerun["points"]] == [
        (p["family"], p["n"], p["counts"]) for p in results["points"]
    ]
