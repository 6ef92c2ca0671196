"""Rewrite the README's flag table from the settings declared in lbproxy/config.py.

    python scripts/readme_flags.py          # rewrite README.md in place
    python scripts/readme_flags.py --check  # exit 1 when the table is stale

tests/test_readme_flags.py fails when the committed table differs from the generated one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lbproxy.config import Config
from lbproxy.settings import flag_table, replace_table

README = Path(__file__).resolve().parent.parent / "README.md"


def main(argv: list[str]) -> int:
    text = README.read_text(encoding="utf-8")
    fresh = replace_table(text, flag_table(Config))
    if "--check" in argv:
        if fresh != text:
            print("README.md's flag table is stale: run python scripts/readme_flags.py")
            return 1
        return 0
    README.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
