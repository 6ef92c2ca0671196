"""``lbproxy analyze``: SPEC Task 4 (A-1..A-4) measured on real balancers, written as a report.

    lbproxy analyze --seed 42                  # own balancers on the process backend
    lbproxy analyze --url http://127.0.0.1:5000 --kill-cmd 'docker kill {backend_id}'

Modules: ``runner`` drives balancers over HTTP and collects the figures (load comes from
``lbproxy_tools.loadtest.run_load``), ``report`` writes ``report.md`` and ``results.json``,
``charts`` draws the PNGs (the only module that imports matplotlib, loaded only when a
report is written), ``geometry`` lays out the seed circles that explain A-4.
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


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "analyze",
        help="run the assignment's Task 4 (A-1..A-4) on real balancers; write charts and report.md",
        description=(
            "Measure request distribution (A-1, A-2), every endpoint and recovery from a "
            "killed replica (A-3), and other hash functions (A-4) on real balancers over "
            "HTTP; write PNG charts, report.md and results.json to OUT. Without --url it "
            "starts its own balancers on the process backend, one per family."
        ),
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
    return 0
