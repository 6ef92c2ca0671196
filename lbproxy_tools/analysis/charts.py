"""The analysis charts (PNG). The only module of lbproxy that imports matplotlib.

Every chart is for a person reading the report: a title that says what was measured,
axis labels with units, the values written on bars, a legend where series share axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from lbproxy_tools.analysis.autoscale import A5
from lbproxy_tools.analysis.geometry import Circle
from lbproxy_tools.analysis.runner import KillDrill, Point
from lbproxy_tools.loadtest import rate_at

DPI = 110
FAMILY_COLORS = {
    "maglev": "#1f77b4",
    "maglev-classic": "#17becf",
    "hashring": "#9467bd",
    "rendezvous": "#8c564b",
    "seed": "#d62728",
    "seed-alt": "#2ca02c",
}
#: Replica colours (matplotlib's tab10), by position in the pool's join order.
_REPLICA_PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
FAILED_COLOR = "#d62728"


def family_color(family: str) -> str:
    return FAMILY_COLORS.get(family, "#7f7f7f")


def replica_color(names: Sequence[str], name: str) -> str:
    colors = _REPLICA_PALETTE
    return colors[list(names).index(name) % len(colors)] if name in names else "#7f7f7f"


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path


def _label_bars(ax: Axes, bars: object, total: int, *, fontsize: int = 9) -> None:
    for bar in bars:  # type: ignore[attr-defined]
        height = bar.get_height()
        share = f"\n{height / total * 100:.1f}%" if total else ""
        ax.annotate(
            f"{int(height):,}{share}",
            (bar.get_x() + bar.get_width() / 2, height),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=fontsize,
        )


def requests_per_replica(points: Sequence[Point], path: Path, *, requests: int) -> Path:
    """A-1: one panel per family, a bar per replica, the ideal even share as a dashed line."""
    fig, axes = plt.subplots(
        1, len(points), figsize=(4.6 * len(points), 4.4), sharey=True, squeeze=False
    )
    top = max(p.max for p in points)
    for ax, p in zip(axes[0], points, strict=True):
        colors = [replica_color(p.replicas, n) for n in p.replicas]
        bars = ax.bar(p.replicas, p.values, color=colors, edgecolor="black", linewidth=0.5)
        _label_bars(ax, bars, sum(p.values))
        ax.axhline(
            p.mean, color="black", linestyle="--", linewidth=1, label=f"even share {p.mean:,.0f}"
        )
        ax.set_title(f"{p.family}: std dev {p.std:,.0f}, busiest {p.imbalance:.2f}x mean")
        ax.set_xlabel("replica")
        ax.legend(loc="upper right", fontsize=8)
        ax.set_ylim(0, top * 1.22)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("requests handled")
    fig.suptitle(
        f"A-1: {requests:,} requests on N = {points[0].n} replicas, requests each replica handled",
        fontsize=12,
    )
    fig.tight_layout()
    return _save(fig, path)


def load_vs_n(series: dict[str, list[Point]], path: Path, *, requests: int) -> Path:
    """A-2: per family, mean load per replica against N with its min-max band and std dev."""
    families = list(series)
    fig, axes = plt.subplots(
        1, len(families), figsize=(4.6 * len(families), 4.6), sharey=True, squeeze=False
    )
    top = max(p.max for pts in series.values() for p in pts)
    for ax, family in zip(axes[0], families, strict=True):
        pts = series[family]
        ns = [p.n for p in pts]
        color = family_color(family)
        ax.fill_between(
            ns,
            [p.min for p in pts],
            [p.max for p in pts],
            color=color,
            alpha=0.18,
            label="min to max replica",
        )
        ax.errorbar(
            ns,
            [p.mean for p in pts],
            yerr=[p.std for p in pts],
            color=color,
            marker="o",
            capsize=4,
            linewidth=2,
            label="mean ± 1 std dev",
        )
        ax.plot(ns, [p.max for p in pts], color=color, linestyle=":", linewidth=1)
        ax.plot(ns, [p.min for p in pts], color=color, linestyle=":", linewidth=1)
        for p in pts:
            ax.annotate(
                f"sd {p.std:,.0f}",
                (p.n, p.mean),
                xytext=(6, 4),
                textcoords="offset points",
                fontsize=8,
                color="black",
            )
        ax.set_title(family)
        ax.set_xlabel("N (replicas)")
        ax.set_xticks(ns)
        ax.set_ylim(0, top * 1.08)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    axes[0][0].set_ylabel("requests per replica")
    fig.suptitle(
        f"A-2: load per replica for N = {min(ns)}..{max(ns)} ({requests:,} requests at each N)",
        fontsize=12,
    )
    fig.tight_layout()
    return _save(fig, path)


def families_at_n(points: Sequence[Point], path: Path, *, requests: int) -> Path:
    """A-4 (A-1 repeated): grouped bars, replicas on x, one bar per family."""
    names = points[0].replicas
    width = 0.8 / len(points)
    fig, ax = plt.subplots(figsize=(max(7.0, 2.6 * len(names)), 4.8))
    for k, p in enumerate(points):
        xs = [i + (k - (len(points) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(
            xs,
            [p.counts[n] for n in names],
            width,
            color=family_color(p.family),
            edgecolor="black",
            linewidth=0.5,
            label=f"{p.family} (std dev {p.std:,.0f}, busiest {p.imbalance:.2f}x)",
        )
        _label_bars(ax, bars, 0, fontsize=8)
    ax.axhline(points[0].mean, color="black", linestyle="--", linewidth=1, label="even share")
    ax.set_xticks(range(len(names)), names)
    ax.set_xlabel("replica")
    ax.set_ylabel("requests handled")
    ax.set_ylim(0, max(p.max for p in points) * 1.15)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=9)
    ax.set_title(f"A-4: {requests:,} requests on N = {points[0].n}, per replica, by hash family")
    fig.tight_layout()
    return _save(fig, path)


def imbalance_vs_n(series: dict[str, list[Point]], path: Path, *, requests: int) -> Path:
    """A-4 (A-2 repeated): busiest/mean and std dev/mean against N, one line per family."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    all_ns: set[int] = set()
    for family, pts in series.items():
        ns = [p.n for p in pts]
        all_ns.update(ns)
        color = family_color(family)
        left.plot(
            ns, [p.imbalance for p in pts], marker="o", color=color, linewidth=2, label=family
        )
        right.plot(
            ns,
            [p.std / p.mean * 100 for p in pts],
            marker="o",
            color=color,
            linewidth=2,
            label=family,
        )
    ns_sorted = sorted(all_ns)
    left.plot(ns_sorted, ns_sorted, color="grey", linestyle=":", label="one replica takes all (N)")
    left.axhline(1.0, color="black", linestyle="--", linewidth=1, label="perfect spread (1.0)")
    left.set_title("busiest replica / mean load")
    left.set_ylabel("ratio (1.0 = even)")
    right.set_title("spread: std dev / mean")
    right.set_ylabel("coefficient of variation (%)")
    for ax in (left, right):
        ax.set_xlabel("N (replicas)")
        ax.set_xticks(ns_sorted)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    right.set_ylim(bottom=0)
    left.set_ylim(bottom=0)
    fig.suptitle(
        f"A-4: how evenly each hash family spreads {requests:,} requests, N = "
        f"{ns_sorted[0]}..{ns_sorted[-1]}",
        fontsize=12,
    )
    fig.tight_layout()
    return _save(fig, path)


def slot_map(circles: Sequence[Circle], path: Path) -> Path:
    """A-4: who owns each slot of the circle, virtual nodes marked; the seed also zoomed in."""
    rows: list[tuple[Circle, tuple[int, int]]] = []
    for c in circles:
        rows.append((c, (0, c.slots)))
        if c.family == "seed":
            lo = min(min(v) for v in c.placements.values())
            hi = max(max(v) for v in c.placements.values())
            rows.append((c, (max(0, lo - 6), min(c.slots, hi + 6))))
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 1.75 * len(rows) + 0.9), squeeze=False)
    for ax, (c, (lo, hi)) in zip(axes[:, 0], rows, strict=True):
        names = list(c.placements)
        runs: list[tuple[int, int, str]] = []  # (first slot, length, owner)
        for slot in range(lo, hi):
            if runs and runs[-1][2] == c.owner[slot]:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1, c.owner[slot])
            else:
                runs.append((slot, 1, c.owner[slot]))
        for first, length, owner in runs:
            ax.broken_barh(
                [(first, length)], (0.3, 0.4), facecolors=replica_color(names, owner), lw=0
            )
        for name, slots in c.placements.items():
            ax.vlines(
                [s + 0.5 for s in slots if lo <= s < hi],
                0.02,
                0.98,
                color=replica_color(names, name),
                linewidth=2.2 if hi - lo < c.slots else 1.6,
            )
        shares = c.shares()
        zoomed = hi - lo < c.slots
        ax.set_title(
            f"{c.family}, slots {lo}..{hi - 1} (zoom on the virtual nodes)"
            if zoomed
            else f"{c.family}: "
            + ", ".join(f"{n} owns {shares[n] * 100:.1f}%" for n in names)
            + " of the 512 slots",
            fontsize=10,
        )
        ax.set_xlim(lo, hi)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_xlabel("slot on the circle; tall ticks = virtual nodes, band = owner of the slot")
    names = list(circles[0].placements)
    handles = [Patch(color=replica_color(names, n), label=n) for n in names]
    fig.suptitle(
        "A-4: the circle at N = 3 (slot owners laid out from the formulas in seed.py)",
        fontsize=12,
    )
    fig.legend(handles=handles, loc="lower center", ncol=len(names), fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, path)


def kill_timeline(drill: KillDrill, path: Path, *, bucket_ms: float = 100.0) -> Path:
    """A-3: recovery milestones on a time axis, over throughput by replica and latency."""
    fig, (top, middle, bottom) = plt.subplots(
        3, 1, figsize=(11, 8.4), sharex=True, gridspec_kw={"height_ratios": [1.2, 1.5, 1.0]}
    )
    marks = [(label, ms) for label, ms in drill.milestones.items() if ms is not None]
    sent = [r[0] for r in drill.requests] or [-1000.0, 1000.0]
    start, end = min(sent), max(sent)
    for row, (label, ms) in enumerate(marks):
        y = len(marks) - 1 - row
        color = FAILED_COLOR if label == "killed" else "black"
        top.plot([0, ms], [y, y], color="#bbbbbb", linewidth=1, zorder=1)
        top.scatter([ms], [y], s=60, color=color, zorder=3)
        top.annotate(
            f"{ms:,.0f} ms",
            (ms, y),
            xytext=(7, 0),
            textcoords="offset points",
            va="center",
            fontsize=9,
        )
    top.set_yticks(range(len(marks)), [label for label, _ in reversed(marks)])
    top.set_ylim(-0.7, len(marks) - 0.3)
    top.grid(axis="x", alpha=0.3)
    top.set_title(
        f"A-3: {drill.victim} SIGKILLed under a steady {drill.rate:,.0f} req/s; "
        f"{drill.failed_in_window} of {drill.sent_in_window:,} requests failed until its "
        "replacement served",
        fontsize=12,
    )
    # requests per bucket (by send time), stacked by the replica that answered
    names = sorted({r for _, _, o, r in drill.requests if o == "ok" and r})
    first = math.floor(start / bucket_ms)
    count = math.floor(end / bucket_ms) - first + 1
    xs = [(first + k) * bucket_ms for k in range(count)]
    stacks = {n: [0] * count for n in names}
    failed = [0] * count
    lat: list[list[float]] = [[] for _ in range(count)]
    for ms, latency, outcome, replica in drill.requests:
        k = math.floor(ms / bucket_ms) - first
        lat[k].append(latency)
        if outcome == "ok" and replica:
            stacks[replica][k] += 1
        else:
            failed[k] += 1
    scale = 1000 / bucket_ms
    bottoms = [0.0] * count
    for name in names:
        values = [v * scale for v in stacks[name]]
        middle.bar(
            xs,
            values,
            bucket_ms,
            bottom=bottoms,
            align="edge",
            color=replica_color(names, name),
            label=name + (" (killed)" if name == drill.victim else ""),
            edgecolor="white",
            linewidth=0.3,
        )
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    if any(failed):
        middle.bar(
            xs,
            [v * scale for v in failed],
            bucket_ms,
            bottom=bottoms,
            align="edge",
            color=FAILED_COLOR,
            label="failed",
        )
    middle.set_ylabel(f"requests/s sent, by the\nreplica that answered\n({bucket_ms:.0f} ms bins)")
    middle.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    middle.grid(axis="y", alpha=0.3)
    centers = [x + bucket_ms / 2 for x in xs]
    med = [sorted(v)[len(v) // 2] if v else math.nan for v in lat]
    worst = [max(v) if v else math.nan for v in lat]
    bottom.plot(centers, worst, color="black", marker=".", linewidth=1.2, label="max")
    bottom.plot(centers, med, color="#1f77b4", marker=".", linewidth=1.2, label="median")
    bottom.set_ylabel("latency (ms)")
    bottom.set_ylim(bottom=0)
    bottom.grid(alpha=0.3)
    bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    bottom.set_xlabel("time since the kill (ms), requests placed by the time they were sent")
    for ax in (top, middle, bottom):
        ax.axvline(0, color=FAILED_COLOR, linestyle="--", linewidth=1)
        for label, ms in marks:
            if label != "killed" and ax is not top:
                ax.axvline(ms, color="black", linestyle=":", linewidth=0.8)
    bottom.set_xlim(start, end)
    fig.tight_layout()
    return _save(fig, path)


def autoscale_timeline(a5: A5, path: Path) -> Path:
    """A-5 over time, one panel each: offered and answered load, pool size (desired and
    ready), in-flight per ready replica, p50/p99 latency, failed requests; per scenario."""
    from lbproxy_tools.analysis import autoscale as a5mod

    prof = a5.options.profile()
    runs = a5.runs
    end = prof[-1][1]
    fig, axes = plt.subplots(5, 1, figsize=(10, 14), sharex=True)
    colours = {
        "autoscaled": "tab:blue",
        f"fixed {a5mod.MIN}": "tab:red",
        f"fixed {a5mod.MAX}": "tab:green",
    }
    ts = [x / 2 for x in range(int(end * 2) + 1)]
    axes[0].plot(ts, [rate_at(t, prof) for t in ts], color="black", label="offered load")
    for run in runs:
        c = colours.get(run.name, "tab:grey")
        buckets: dict[int, list[float]] = {}
        fails: dict[int, int] = {}
        done: dict[int, int] = {}
        for s, lat, ok in zip(run.sent, run.latency, run.ok, strict=True):
            k = int(s // 2)
            buckets.setdefault(k, []).append(lat)
            if ok:
                done[k] = done.get(k, 0) + 1
            else:
                fails[k] = fails.get(k, 0) + 1
        keys = sorted(buckets)
        xs = [k * 2 + 1 for k in keys]
        axes[0].plot(xs, [done.get(k, 0) / 2 for k in keys], color=c, alpha=0.7,
                     label=f"{run.name}: answered 200")  # fmt: skip
        t = [s["t"] for s in run.samples]
        if run.name == "autoscaled":
            axes[1].step(t, [s.get("desired", math.nan) for s in run.samples], where="post",
                         color=c, linestyle="--", label="autoscaled: desired")  # fmt: skip
        axes[1].step(t, [s.get("ready", math.nan) for s in run.samples], where="post", color=c,
                     label=f"{run.name}: ready")  # fmt: skip
        axes[2].plot(t, [s["in_flight_sum"] / max(1.0, s.get("ready", 1.0)) for s in run.samples],
                     color=c, label=run.name)  # fmt: skip
        axes[3].plot(xs, [a5mod.pct(buckets[k], 50) * 1000 for k in keys], color=c,
                     linestyle="--", label=f"{run.name} p50")  # fmt: skip
        axes[3].plot(xs, [a5mod.pct(buckets[k], 99) * 1000 for k in keys], color=c,
                     label=f"{run.name} p99")  # fmt: skip
        axes[4].bar(xs, [fails.get(k, 0) for k in keys], width=1.6, color=c, alpha=0.5,
                    label=run.name)  # fmt: skip
    axes[2].axhline(a5mod.TARGET, color="grey", linestyle=":", label=f"target {a5mod.TARGET}")
    axes[2].axhline(a5mod.CONCURRENCY, color="black", linestyle=":",
                    label=f"replica slots {a5mod.CONCURRENCY}")  # fmt: skip
    axes[2].set_ylim(0, 10 * a5mod.CONCURRENCY)  # the fixed-1 pool's backlog runs far off scale
    axes[0].set_ylabel("req/s")
    axes[1].set_ylabel("replicas")
    axes[2].set_ylabel("in flight per ready replica\n(fixed 1 off scale)")
    axes[3].set_ylabel("latency ms (log)")
    axes[3].set_yscale("log")
    axes[4].set_ylabel("failed requests / 2 s")
    axes[4].set_xlabel("seconds (requests placed by their scheduled send time)")
    for ax in axes:
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"A-5: autoscaled {a5mod.MIN}:{a5mod.MAX} (target {a5mod.TARGET}) vs fixed pools; "
        f"replicas {a5mod.DELAY_MS} ms x {a5mod.CONCURRENCY} slots"
    )
    fig.tight_layout()
    return _save(fig, path)
