"""``lbproxy analyze``: SPEC Task 4 (A-1..A-4) and issue 12's A-5, measured on real balancers.

    lbproxy analyze --seed 42                  # A-1..A-4, own balancers on the process backend
    lbproxy analyze --url http://127.0.0.1:5000 --kill-cmd 'docker kill {backend_id}'
    lbproxy analyze --parts a5                 # A-5 alone: autoscaled vs fixed pools, ~6 min
    lbproxy analyze --parts all                # both

A-5 is left out by default: it runs three 90 s scenarios and a cold-start pass (about six
minutes of a loaded machine) and writes files of its own (a5_autoscale.md, .json, .png),
so a default run neither waits for it nor overwrites its report.

Modules: ``runner`` drives balancers over HTTP and collects the figures (load comes from
``lbproxy_tools.loadtest.run_load``), ``report`` writes ``report.md`` and ``results.json``,
``charts`` draws the PNGs (the only module that imports matplotlib, loaded only when a
report is written), ``geometry`` lays out the seed circles that explain A-4, ``autoscale``
runs A-5 (its load is ``run_load(schedule=...)``, the same engine, open loop). The prose of
both reports is in ``templates/`` (Jinja2).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from lbproxy.argtypes import positive_float, positive_int

__all__ = ["add_parser"]


def _families(text: str) -> list[str]:
    from lbproxy.ring import FAMILY_NAMES

    names = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in names if f not in FAMILY_NAMES]
    if not names or unknown:
        bad = ", ".join(unknown) or "(none)"
        raise argparse.ArgumentTypeError(
            f"unknown family {bad}; choose from {', '.join(FAMILY_NAMES)}"
        )
    return list(dict.fromkeys(names))


#: What ``--parts`` accepts: Task 4's analyses (measured together: A-1, A-2 and A-4 share
#: one sweep of N per family) and A-5.
PARTS = ("a1-a4", "a5")


def _parts(text: str) -> list[str]:
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    if names == ["all"]:
        return list(PARTS)
    unknown = [p for p in names if p not in PARTS]
    if not names or unknown:
        bad = ", ".join(unknown) or "(none)"
        raise argparse.ArgumentTypeError(
            f"unknown part {bad}; choose from {', '.join(PARTS)} (comma-separated) or all"
        )
    return [p for p in PARTS if p in names]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "analyze",
        help="run the assignment's Task 4 (A-1..A-4) and A-5 on real balancers; write charts "
        "and reports",
        description=(
            "Measure request distribution (A-1, A-2), every endpoint and recovery from a "
            "killed replica (A-3), and other hash functions (A-4) on real balancers over "
            "HTTP; write PNG charts, report.md and results.json to OUT. Without --url it "
            "starts its own balancers on the process backend, one per family. With --parts "
            "a5 (or all) it also runs A-5: an autoscaled pool against fixed pools under a "
            "stepped, open-loop load (about 6 minutes), into a5_autoscale.md/.json/.png."
        ),
    )
    p.add_argument(
        "--parts",
        type=_parts,
        default=["a1-a4"],
        help="what to run: a1-a4 (Task 4), a5 (autoscaling, ~6 min), comma-separated, or all "
        "[a1-a4]",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="A-5: halve every load phase and make one cold start (a smoke run)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("docs/analysis"), help="output directory [%(default)s]"
    )
    p.add_argument(
        "--requests", type=positive_int, default=10000, help="requests per point [%(default)s]"
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the request ids [%(default)s]")
    p.add_argument(
        "--families",
        type=_families,
        default=["maglev", "seed", "seed-alt"],
        help="hash families to compare, comma-separated [maglev,seed,seed-alt]",
    )
    p.add_argument("--min-n", type=positive_int, default=2, help="smallest N of A-2 [%(default)s]")
    p.add_argument("--max-n", type=positive_int, default=6, help="largest N of A-2 [%(default)s]")
    p.add_argument(
        "--concurrency", type=positive_int, default=100, help="connections per point [%(default)s]"
    )
    p.add_argument(
        "--url",
        default=None,
        help="drive this existing balancer instead of starting balancers (its family only)",
    )
    p.add_argument(
        "--admin-url",
        default=None,
        help="with --url: the balancer's admin listener if it has one (serve --admin-port)",
    )
    p.add_argument(
        "--kill-cmd",
        default=None,
        help="with --url: command that kills a replica, with {name} and {backend_id} "
        "placeholders (e.g. 'docker kill {backend_id}'); without it A-3's kill needs local "
        "replica processes and is skipped otherwise",
    )
    p.add_argument(
        "--kill-rate",
        type=positive_float,
        default=400.0,
        help="steady load during A-3's kill, req/s [%(default)s]",
    )
    p.add_argument(
        "--admin-token",
        default=os.environ.get("LBPROXY_ADMIN_TOKEN") or None,
        help="with --url: bearer token for /add and /rm [env LBPROXY_ADMIN_TOKEN]",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_cli)


def _command(argv: list[str] | None) -> str:
    return "lbproxy analyze" + (" " + shlex.join(argv) if argv else "")


def _run_cli(args: argparse.Namespace) -> int:
    from lbproxy.cli import new_event_loop
    from lbproxy_tools.analysis import report
    from lbproxy_tools.analysis.runner import AnalysisError, Options, log, run_analysis

    if args.min_n > args.max_n:
        print("lbproxy analyze: --min-n must not exceed --max-n", file=sys.stderr)
        return 2
    if "a5" in args.parts and args.url:
        print(
            "lbproxy analyze: A-5 starts its own balancers (replicas with a service time); "
            "drop --url or run --parts a1-a4",
            file=sys.stderr,
        )
        return 2
    argv = sys.argv[sys.argv.index("analyze") + 1 :] if "analyze" in sys.argv else []
    opts = Options(
        out=args.out,
        requests=args.requests,
        seed=args.seed,
        families=args.families,
        min_n=args.min_n,
        max_n=args.max_n,
        concurrency=args.concurrency,
        url=args.url,
        admin_url=args.admin_url,
        kill_cmd=args.kill_cmd,
        kill_rate=args.kill_rate,
        admin_token=args.admin_token,
        progress=not args.quiet and sys.stderr.isatty(),
        command=_command(argv),
    )
    if "a1-a4" in args.parts:
        started = time.monotonic()
        loop = new_event_loop("auto")
        try:
            analysis = loop.run_until_complete(run_analysis(opts))
        except AnalysisError as exc:
            print(f"lbproxy analyze: {exc}", file=sys.stderr)
            return 1
        finally:
            loop.close()
        path = report.write(analysis, opts.out)
        log(f"wrote {path} and its charts in {time.monotonic() - started:.0f} s")
    if "a5" in args.parts:
        return _run_a5(args, opts.command)
    return 0


def _run_a5(args: argparse.Namespace, command: str) -> int:
    from lbproxy.cli import new_event_loop
    from lbproxy_tools.analysis import autoscale, report
    from lbproxy_tools.analysis.runner import log

    started = time.monotonic()
    opts = autoscale.Options(out=args.out, quick=args.quick, command=command)
    loop = new_event_loop("auto")
    try:
        a5 = loop.run_until_complete(autoscale.run_a5(opts))
    finally:
        loop.close()
    path = report.write_a5(a5, opts.out)
    log(f"wrote {path} and its chart in {time.monotonic() - started:.0f} s")
    return 0
