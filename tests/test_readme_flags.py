"""The README's flag table names every `lbproxy serve` flag, and no flag that is gone.

Issue 13: the table is generated from the settings declared on Config (lbproxy/config.py,
scripts/readme_flags.py), so a test catches the committed table going stale the day a flag
is added, renamed or its default changes. A row may name several flags in its first cell.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from lbproxy.cli import build_parser
from lbproxy.config import Config
from lbproxy.settings import TABLE_BEGIN, TABLE_END, Setting, flag_table, replace_table

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


def test_the_table_is_the_generated_one() -> None:
    """Fix a failure with ``python scripts/readme_flags.py`` (never by hand)."""
    text = README.read_text(encoding="utf-8")
    assert replace_table(text, flag_table(Config)) == text


def test_the_generator_writes_one_row_per_flag_from_the_declarations() -> None:
    table = flag_table(Config).splitlines()
    assert table[:2] == ["| flag | default | meaning |", "|---|---|---|"]
    assert len(table) - 2 == len(_serve_flags())
    rows = {row.split(" | ")[0].removeprefix("| "): row for row in table[2:]}
    assert rows["`--heartbeat-interval`"].endswith(
        "| 1 s | seconds between two heartbeats of a replica |"
    )
    assert "| 16 MiB |" in rows["`--max-body`"]
    assert "| unset (off) |" in rows["`--autoscale MIN:MAX`"]
    assert rows["`--log-level`"].endswith("`debug`, `info`, `warning`, `error` |")


def test_a_pipe_in_a_help_text_cannot_break_the_table() -> None:
    from dataclasses import dataclass

    from lbproxy.settings import setting

    @dataclass(frozen=True)
    class Tiny:
        mode: str = setting("a", "--mode", "a|b", choices=("a", "b"))

    row = flag_table(Tiny).splitlines()[2]
    assert row == "| `--mode` | `a` | a\\|b: `a`, `b` |"
    assert isinstance(Tiny.__dataclass_fields__["mode"].metadata["setting"], Setting)


def test_replacing_needs_both_markers() -> None:
    with pytest.raises(ValueError, match="flag table"):
        replace_table("no markers here", "| x |")
    assert replace_table(f"a\n{TABLE_BEGIN}\nold\n{TABLE_END}\nb", "new") == (
        f"a\n{TABLE_BEGIN}\nnew\n{TABLE_END}\nb"
    )
