"""The benches' load shapes honour BENCH_QUICK: `BENCH_QUICK=1 make bench` is documented as a
smoke run (docs/performance.md, bench/run.sh), so no part of it may keep its full shape.
bench/tail.py once ignored it and ran two full rounds (over two minutes) inside the smoke run.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parent.parent / "bench"
SHAPE = ("BENCH_ROUNDS", "BENCH_DURATION", "BENCH_WARMUP", "BENCH_DEADLINE", "BENCH_QUICK")


def load_bench(name: str) -> ModuleType:
    """Import bench/NAME.py as the benches run it: with bench/ on sys.path (`from common ...`)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in SHAPE:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("bench", ["http_bench", "tail"])
def test_quick_mode_is_one_short_round(bench: str, clean_env: pytest.MonkeyPatch) -> None:
    module = load_bench(bench)
    full = module.settings()
    clean_env.setenv("BENCH_QUICK", "1")
    quick = module.settings()
    assert (quick.rounds, quick.duration, quick.warmup) == (1, 3, 1)
    assert quick.deadline < full.deadline
    assert full.rounds > 1 and full.duration > quick.duration


def test_tail_keeps_its_full_shape_and_explicit_values(clean_env: pytest.MonkeyPatch) -> None:
    tail = load_bench("tail")
    full = tail.settings()
    assert (full.rounds, full.duration, full.warmup, full.deadline) == (2, 8, 2, 420)
    clean_env.setenv("BENCH_QUICK", "1")
    clean_env.setenv("BENCH_ROUNDS", "2")
    assert tail.settings().rounds == 2  # an explicit value beats quick mode's
