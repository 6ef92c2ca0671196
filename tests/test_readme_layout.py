"""The README's Layout block names every module of the shipped package (issue 13: "keep the
README's Layout true"); a new module without a line there fails here, not in review."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent


def layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Layout\n+```\n(.*?)^```", text, re.S | re.M)
    assert match, "README.md has no ## Layout code block"
    return match.group(1)


def test_every_module_of_the_package_is_named_in_the_layout_block() -> None:
    block = layout_block()
    named = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*\.py", block))
    # A package described as a whole by its directory line needs no per-file line.
    whole = {"ring", "views"}
    missing = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "lbproxy").rglob("*.py"))
        if path.name not in {"__init__.py", "__main__.py", "_common.py"}
        and path.parent.name not in whole
        and path.name not in named
    ]
    assert not missing, f"README Layout does not name: {missing}"


def test_every_module_the_layout_names_exists() -> None:
    block = layout_block()
    files = {p.name for p in (ROOT / "lbproxy").rglob("*.py")}
    files |= {p.name for p in (ROOT / "lbproxy_tools").rglob("*.py")}
    files |= {p.name for p in (ROOT / "socket-proxy").rglob("*.py")}
    files |= {p.name for p in (ROOT / "tests").glob("*.py")}
    gone = sorted(set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*\.py", block)) - files)
    assert not gone, f"README Layout names modules that do not exist: {gone}"
