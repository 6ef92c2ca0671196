"""Turns an ``Analysis`` into ``report.md``, ``results.json`` and the PNG charts.

Every figure in the report is formatted from the measured ``Analysis``; the prose around
them only states what the numbers show, so a re-run rewrites the whole file. The prose is
``templates/report.md.j2`` (package data of lbproxy-tools); this module only prepares the
values it quotes (``context``): which points, which replica is the busiest, the seed
circle's arcs, ... An edit to the wording is an edit to the template alone.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import jinja2

from lbproxy_tools.analysis import geometry
from lbproxy_tools.analysis.autoscale import A5
from lbproxy_tools.analysis.runner import Analysis, Exchange, Point, TimelineEvent

A1_FAMILIES_EXTRA = "seed"
CHARTS = {
    "a1": "a1_requests_per_replica.png",
    "a2": "a2_load_vs_n.png",
    "a3": "a3_kill_timeline.png",
    "a4_bar": "a4_families_n3.png",
    "a4_line": "a4_imbalance_vs_n.png",
    "a4_slots": "a4_seed_slot_map.png",
}


def _pct(part: float, whole: float) -> str:
    return f"{part / whole * 100:.1f}%" if whole else "n/a"


def _counts(p: Point) -> str:
    return ", ".join(f"{n} {p.counts[n]:,}" for n in p.replicas)


def _series(analysis: Analysis) -> dict[str, list[Point]]:
    opts = analysis.options
    return {
        f: [p for p in analysis.points if p.family == f and opts.min_n <= p.n <= opts.max_n]
        for f in analysis.families
    }


def _a1_points(analysis: Analysis) -> list[Point]:
    wanted = [analysis.default_family, A1_FAMILIES_EXTRA]
    out = []
    for family in dict.fromkeys(wanted):
        p = analysis.point(family, 3)
        if p is not None:
            out.append(p)
    if not out:
        out = [p for p in analysis.points if p.n == 3][:1]
    return out


def _binomial_sd(requests: int, n: int) -> float:
    return math.sqrt(requests * (1 / n) * (1 - 1 / n))


def _exchange(ex: Exchange) -> dict[str, object]:
    """One call of the endpoint tour as the report shows it: a curl line and the answer."""
    head = f"curl -s -X {ex.method} $LB{ex.path}" if ex.method != "GET" else f"curl -s $LB{ex.path}"
    for k, v in ex.headers.items():
        if k != "Content-Type":
            head += f" -H '{k}: {v}'"
    if ex.body is not None:
        head += f" -d '{ex.body}'"
    shown = "".join(f"\n{k}: {v}" for k, v in ex.response_headers.items() if k == "X-Request-ID")
    body = ex.response if ex.response else "(empty body)"
    if len(body) > 700:
        body = body[:700] + " ..."
    return {"title": ex.title, "command": head, "status": ex.status, "shown": shown, "body": body}


def _charts(analysis: Analysis, out: Path) -> dict[str, Path]:
    from lbproxy_tools.analysis import charts

    opts = analysis.options
    made: dict[str, Path] = {}
    a1 = _a1_points(analysis)
    if a1:
        made["a1"] = charts.requests_per_replica(a1, out / CHARTS["a1"], requests=opts.requests)
    series = {f: pts for f, pts in _series(analysis).items() if pts}
    if series:
        made["a2"] = charts.load_vs_n(series, out / CHARTS["a2"], requests=opts.requests)
    if analysis.kill.performed:
        made["a3"] = charts.kill_timeline(analysis.kill, out / CHARTS["a3"])
    at3 = [p for f in analysis.families if (p := analysis.point(f, 3)) is not None]
    if len(at3) > 1:
        made["a4_bar"] = charts.families_at_n(at3, out / CHARTS["a4_bar"], requests=opts.requests)
    if len(series) > 1:
        made["a4_line"] = charts.imbalance_vs_n(
            series, out / CHARTS["a4_line"], requests=opts.requests
        )
    circles = [
        geometry.circle(f, analysis.point(f, 3).replicas)  # type: ignore[union-attr]
        for f in geometry.SEED_FAMILIES
        if analysis.point(f, 3) is not None
    ]
    if circles:
        made["a4_slots"] = charts.slot_map(circles, out / CHARTS["a4_slots"])
    return made


def _fmt(value: object, spec: str = "") -> str:
    """The template's ``fmt`` filter: Python's format spec (``1234|fmt(",")`` -> ``1,234``)."""
    return format(value, spec)


def _ms(value: float | None) -> str:
    return "not seen" if value is None else f"{value:,.0f} ms"


@functools.cache
def _templates() -> jinja2.Environment:
    """The report templates shipped in ``lbproxy_tools/analysis/templates`` (package data).

    Markdown, so no autoescaping; StrictUndefined so that a misspelt name fails the render
    instead of leaving a hole in the report.
    """
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("lbproxy_tools.analysis", "templates"),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["ms"] = _ms
    env.globals["pct"] = _pct
    return env


def _alt() -> dict[str, int]:
    from lbproxy.ring.seed import ALT_PHI_COEFFS

    a, b, c = ALT_PHI_COEFFS
    return {"a": a, "b": b, "c": c}


def _maglev_slots() -> int:
    """The entries of the Maglev tables the geometry analysis builds (the family's largest)."""
    from lbproxy.ring import make_family

    slots: int = make_family("maglev").slots  # type: ignore[attr-defined]
    return slots


def _a1_notes(analysis: Analysis, a1: list[Point]) -> list[tuple[Point, dict[str, object]]]:
    """Per A-1 point: its busiest replica, the others' counts, the largest gap to the ring."""
    R = analysis.options.requests
    notes: list[tuple[Point, dict[str, object]]] = []
    for p in a1:
        expected = {n: p.shares.get(n, 0) * R for n in p.replicas}
        top = max(p.replicas, key=lambda n: p.counts[n])
        notes.append(
            (
                p,
                {
                    "top": top,
                    "others": [p.counts[n] for n in p.replicas if n != top],
                    "dev": max(abs(p.counts[n] - expected[n]) for n in p.replicas),
                },
            )
        )
    return notes


def _a2(analysis: Analysis) -> list[tuple[str, list[Point], dict[str, object]]]:
    """Per family: its points and the figures the A-2 paragraph quotes."""
    R = analysis.options.requests
    out: list[tuple[str, list[Point], dict[str, object]]] = []
    for family, pts in _series(analysis).items():
        if not pts:
            continue
        x: dict[str, object] = {
            "worst": max(pts, key=lambda p: p.imbalance),
            "best": min(pts, key=lambda p: p.imbalance),
        }
        if family == "seed":
            share = [p.max / R * 100 for p in pts]
            x.update(share_min=min(share), share_max=max(share))
        else:
            spread = [max(p.shares.values()) * p.n for p in pts if p.shares]
            x.update(
                binomial=[_binomial_sd(R, p.n) for p in pts],
                spread_min=min(spread),
                spread_max=max(spread),
            )
        out.append((family, pts, x))
    return out


def _kill(analysis: Analysis) -> dict[str, object]:
    """A-3's drill: the milestones and phase counts the text quotes."""
    k = analysis.kill
    launch = k.milestones.get("replacement launched")
    up = k.milestones.get("replacement up")
    idle = sorted(k.idle_launch_to_up_ms) if launch is not None and up is not None else []

    def first_event(kinds: list[str]) -> TimelineEvent | None:
        return next((e for e in k.events if e.kind in kinds), None)

    return {
        "first_event": first_event,
        "detected": k.milestones.get("detected"),
        "removed": k.milestones.get("removed from ring"),
        "launch": launch,
        "up": up,
        "idle": idle,
        "phase_names": sorted({n for ph in k.phases.values() for n in ph}),
        "during": k.phases.get("answered between the kill and up", {}),
        "after": k.phases.get("answered after up", {}),
    }


def _why_seed(analysis: Analysis) -> dict[str, object] | None:
    """The seed circle's geometry at N = 3 (and seed-alt's, and the default's spread)."""
    seed3 = analysis.point("seed", 3)
    if seed3 is None:
        return None
    circ = geometry.circle("seed", seed3.replicas)
    shares = circ.shares()
    arcs = sorted(circ.arcs(), key=lambda arc: -arc[1])
    top = max(shares, key=lambda n: shares[n])
    start, length, owner = arcs[0]
    why: dict[str, object] = {
        "seed": seed3,
        "names": seed3.replicas,
        "offsets": geometry.phi_offsets(),
        "placements": circ.placements,
        "clusters": ", ".join(
            "/".join(str(circ.placements[n][j]) for n in seed3.replicas) for j in range(3)
        ),
        "shares": shares,
        "slots": circ.slots,
        "top": top,
        "owned": len([arc for arc in circ.arcs() if arc[2] == top]),
        "longest": {
            "start": start,
            "length": length,
            "end": (start + length - 1) % circ.slots,
            "owner": owner,
        },
        "ring_match": all(abs(shares[n] - seed3.shares.get(n, -1)) < 1e-9 for n in seed3.replicas),
        "reach": geometry.h_residues(),
        "alt": None,
        "default": None,
    }
    alt3 = analysis.point("seed-alt", 3)
    if alt3 is not None:
        alt_c = geometry.circle("seed-alt", alt3.replicas)
        gaps = sorted({arc[1] for arc in alt_c.arcs()})
        why["alt"] = {
            "point": alt3,
            "shares": alt_c.shares(),
            "gap_min": gaps[0],
            "gap_max": gaps[-1],
            "max_ratio": max(p.imbalance for p in analysis.points if p.family == "seed-alt"),
        }
    mag = [p for p in analysis.points if p.family == analysis.default_family]
    if mag and analysis.default_family not in ("seed", "seed-alt"):
        why["default"] = {
            "max_imbalance": max(p.imbalance for p in mag),
            "worst_share": max(max(p.shares.values()) * p.n for p in mag if p.shares),
            "min_p": min(p.p_value for p in mag),
        }
    return why


def _variants(analysis: Analysis) -> dict[str, object]:
    """The assignment's two texts and both probings, derived from the rings (issue 11)."""
    opts = analysis.options
    rows = geometry.variant_table(requests=opts.requests, seed=opts.seed)
    by = {(r.family, r.probe): r for r in rows}
    return {
        "table": geometry.variant_markdown(rows),
        "seed_q": by[("seed", "quadratic")],
        "seed_l": by[("seed", "linear")],
        "y_q": by[("seed-2024", "quadratic")],
        "y_l": by[("seed-2024", "linear")],
    }


def context(analysis: Analysis, made: dict[str, Path]) -> dict[str, object]:
    """Every value ``report.md.j2`` words: the measured ``Analysis`` and what follows from it."""
    opts = analysis.options
    R = opts.requests
    series = _series(analysis)
    a1 = _a1_points(analysis)
    return {
        "opts": opts,
        "R": R,
        "mode": analysis.mode,
        "ns": opts.ns(),
        "notes": analysis.notes,
        "default": analysis.default_family,
        "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(analysis.started)),
        "took": analysis.finished - analysis.started,
        "env": {
            key: analysis.environment.get(key, "?")
            for key in ("cpus", "python", "load_start", "load_end")
        },
        "made": {key: path.name for key, path in made.items()},
        "points": analysis.points,
        "point": analysis.point,
        "agree": [p for p in analysis.points if p.counters_agree],
        "disagree": [p for p in analysis.points if not p.counters_agree],
        "total_errors": sum(sum(p.errors.values()) for p in analysis.points),
        "series": series,
        "summary_ns": [p.n for p in next(iter(series.values()), [])],
        "k": analysis.kill,
        "a1": a1,
        "a1_notes": _a1_notes(analysis, a1),
        "a1_sd": _binomial_sd(R, 3),
        "a2": _a2(analysis),
        "endpoints": [_exchange(ex) for ex in analysis.endpoints],
        **_kill(analysis),
        "alt": _alt(),
        "maglev_slots": _maglev_slots(),
        "at3": [q for f in analysis.families if (q := analysis.point(f, 3)) is not None],
        "why": _why_seed(analysis),
        "variants": _variants(analysis),
    }


def render(analysis: Analysis, made: dict[str, Path]) -> str:
    """``report.md``: the template ``templates/report.md.j2`` filled from ``context``."""
    return _templates().get_template("report.md.j2").render(context(analysis, made))


def write(analysis: Analysis, out: Path) -> Path:
    """Charts, ``report.md`` and ``results.json`` into ``out``; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    made = _charts(analysis, out)
    analysis.finished = time.time()  # the run time in the report includes the charts
    report = out / "report.md"
    report.write_text(render(analysis, made), encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps(analysis.to_json(), indent=1, sort_keys=False) + "\n", encoding="utf-8"
    )
    return report


# -- A-5 -----------------------------------------------------------------------------------

A5_FILES = {"json": "a5_autoscale.json", "chart": "a5_autoscale.png", "report": "a5_autoscale.md"}


#: Figures a run has only when it was autoscaled (or that older a5_autoscale.json lack).
A5_OPTIONAL = (
    "step_decision_s",
    "step_serving_s",
    "scale_changes",
    "changes_in_constant_load",
    "events",
    "ready_at",
    "max_desired",
    "queue",
)


def _median(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(finite) if finite else None


def a5_context(results: dict[str, Any]) -> dict[str, object]:
    """Every value ``a5_autoscale.md.j2`` words, from a5_autoscale.json's figures."""
    from lbproxy_tools.analysis import autoscale

    bounds = results.get("autoscale") or {}
    lo = int(bounds.get("min", autoscale.MIN))
    hi = int(bounds.get("max", autoscale.MAX))
    target = int(bounds.get("target", autoscale.TARGET))
    by_name = {r["name"]: r for r in results["runs"]}
    auto, low, high = by_name["autoscaled"], by_name[f"fixed {lo}"], by_name[f"fixed {hi}"]
    runs = []
    for label, r in (
        (f"autoscaled {lo}:{hi}", auto),
        (f"fixed {lo} (MIN)", low),
        (f"fixed {hi} (MAX)", high),
    ):
        failures = sorted(
            ((k, n) for k, n in r["outcomes"].items() if k != "ok" and n), key=lambda kv: -kv[1]
        )
        optional = dict.fromkeys(A5_OPTIONAL)  # absent from fixed pools and older runs
        runs.append({**optional, **r, "label": label, "failures": failures})
    auto = runs[0]
    prof = [tuple(p) for p in results["profile"]]
    plateau_a, plateau_b = prof[3][0], prof[3][1]
    replica = results["replica"]
    per_replica = replica["concurrency"] / (replica["delay_ms"] / 1000)
    peak = prof[3][2]
    reached = [(int(n), t) for n, t in (auto.get("ready_at") or {}).items() if t is not None]
    final_n, final_ready = max(reached) if reached else (None, None)
    step_size, step_size_s = _step_size(auto.get("events") or [], prof[1][0])
    ratio = None
    a99, h99 = auto["settled_peak"]["p99_ms"], high["settled_peak"]["p99_ms"]
    if not (math.isnan(a99) or math.isnan(h99)) and h99 > 0:
        ratio = a99 / h99
    colds = results.get("cold_starts") or []
    machine = results.get("machine") or {}
    stable_window = 20.0 * (0.5 if results.get("quick") else 1.0)  # the default, scaled
    return {
        "r": {
            **results,
            "machine": {
                "cpus": machine.get("cpus") or machine.get("nproc"),
                **{k: machine[k] for k in ("load_start", "load_end") if k in machine},
            },
        },
        "runs": runs,
        "auto": auto,
        "low": runs[1],
        "high": runs[2],
        "lo": lo,
        "hi": hi,
        "auto_target": target,
        "per_replica": per_replica,
        "timeout": (results.get("client") or {}).get("timeout_s", autoscale.CLIENT_TIMEOUT),
        "phases": auto["phases"],
        "requests": auto["total"]["requests"],
        "step_at": prof[1][0],
        "step_rate": prof[1][2],
        "peak": peak,
        "needed_peak": math.ceil(peak * replica["delay_ms"] / 1000 / target),
        "settled_from": (plateau_a + plateau_b) / 2,
        "settled_to": plateau_b,
        "final_n": final_n,
        "final_ready": final_ready,
        "step_size": step_size,
        "step_size_s": step_size_s,
        "ratio": ratio,
        "stable_window": stable_window,
        "crowded": _crowded_changes(auto.get("events") or [], prof, stable_window),
        "scale_downs_after_step_down": [
            t
            for t, d in auto.get("events") or []
            if d.startswith("scaled down") and t >= prof[-1][0]
        ],
        "colds": colds,
        "cold_median": {
            key: _median([c[key] for c in colds])
            for key in ("decision_ms", "launched_ms", "up_ms", "client_ms")
        },
    }


def _step_size(events: list[tuple[float, str]], step: float) -> tuple[int | None, float | None]:
    """The pool the step's first scale-up decision asked for, and the seconds after the
    step at which a completed change (``scaled up by N: actual=X ...``) reached it."""
    size = None
    for t, detail in events:
        if t < step:
            continue
        if size is None and detail.startswith("desired="):
            fields = dict(f.split("=", 1) for f in detail.split() if "=" in f)
            if int(fields["desired"]) > int(fields.get("actual", 0)):
                size = int(fields["desired"])
        elif size is not None and detail.startswith("scaled up") and "actual=" in detail:
            actual = int(detail.split("actual=")[1].split()[0])
            if actual >= size:
                return size, t - step
    return size, None


def _crowded_changes(
    events: list[tuple[float, str]], prof: list[tuple[float, ...]], window: float
) -> list[dict[str, object]]:
    """Issue 12's flapping, word for word: two consecutive scale changes less than one
    stable window apart, both under the same constant load, in either direction. (It used
    to count only changes of direction, so ce8332f's 7 -> 8 -> 10, two scale-ups 3.5 s apart
    on the plateau, passed.)"""
    changes = [(t, d) for t, d in events if d.startswith(("scaled up", "scaled down"))]
    out: list[dict[str, object]] = []
    for (t1, d1), (t2, d2) in itertools.pairwise(changes):
        stretch = next((ph for ph in prof if ph[2] == ph[3] and ph[0] <= t1 and t2 < ph[1]), None)
        if t2 - t1 < window and stretch is not None:
            out.append({"t1": t1, "d1": d1, "t2": t2, "d2": d2, "rate": stretch[2]})
    return out


def render_a5(results: dict[str, Any]) -> str:
    """``a5_autoscale.md``: the template ``templates/a5_autoscale.md.j2`` filled in."""
    return _templates().get_template("a5_autoscale.md.j2").render(a5_context(results))


def write_a5(a5: A5, out: Path) -> Path:
    """A-5's chart, ``a5_autoscale.json`` and ``a5_autoscale.md`` into ``out``."""
    from lbproxy_tools.analysis import charts

    out.mkdir(parents=True, exist_ok=True)
    charts.autoscale_timeline(a5, out / A5_FILES["chart"])
    (out / A5_FILES["json"]).write_text(
        json.dumps(_jsonable(a5.results), indent=1) + "\n", encoding="utf-8"
    )
    path = out / A5_FILES["report"]
    path.write_text(render_a5(a5.results), encoding="utf-8")
    return path


def _jsonable(obj: object) -> object:
    """NaN (a window with no request) as null: JSON has no NaN."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj
