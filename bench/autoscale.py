"""Analysis A-5 (issue 12) as a benchmark: now part of ``lbproxy analyze`` (``--parts a5``).

The run itself (an autoscaled pool against fixed MIN and MAX pools under an open-loop,
stepped and ramped load from ``run_load(schedule=...)``, then cold starts from zero) lives
in ``lbproxy_tools.analysis.autoscale``; its report comes from a template. This wrapper
keeps the benchmark's command and its knobs:

    flock /tmp/lbproxy-heavy.lock .venv/bin/python bench/autoscale.py
        = lbproxy analyze --parts a5 --out docs/analysis    (~6 min; a5_autoscale.md/.json/.png)
    BENCH_QUICK=1 ...   every phase halved, one cold start (--quick)
    ... --cold-only     five cold starts from zero with their steps (a5_cold_start.json)

Load only goes to 127.0.0.1; every balancer started is stopped on any exit.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, lbproxy_revision, quick, run_main, write_json

from lbproxy.cli import main as lbproxy_main
from lbproxy_tools.analysis import autoscale

OUT = ROOT / "docs" / "analysis"


def main() -> int:
    if "--cold-only" in sys.argv:  # just the scale-to-zero figure, five cold starts
        colds = asyncio.run(autoscale.cold_starts(5))
        write_json(OUT / "a5_cold_start.json", {"revision": lbproxy_revision(), "runs": colds})
        for key in colds[0]:
            print(f"{key}: median {statistics.median(c[key] for c in colds):.0f}")
        return 0
    argv = ["analyze", "--parts", "a5", "--out", "docs/analysis", *(["--quick"] if quick() else [])]
    os.chdir(ROOT)
    sys.argv = ["lbproxy", *argv]  # the command the report quotes
    lbproxy_main(argv)  # exits with the command's status
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run_main(main)
