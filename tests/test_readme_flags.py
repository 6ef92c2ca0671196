"""The README's flag table names every `lbproxy serve` flag, and no flag that is gone.

Issue 13: the table is written by hand, so a test catches it going stale the day a flag is
added or renamed. A row may name several flags in its first cell.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from lbproxy.cli import build_parser

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parent.parent / "README.md"


def _serve_flags() -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    serve = sub.choices["serve"]
    return {
        o for a in serve._actions for o in a.option_strings if o.startswith("--") and o != "--help"
    }


def _table_flags() -> set[str]:
    names: set[str] = set()
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `--"):
            names |= set(re.findall(r"`(--[a-z0-9-]+)", line.split("|")[1]))
    return names


def test_every_serve_flag_has_a_row() -> None:
    assert sorted(_serve_flags() - _table_flags()) == []


def test_no_row_names_a_flag_that_is_gone() -> None:
    assert sorted(_table_flags() - _serve_flags()) == []
