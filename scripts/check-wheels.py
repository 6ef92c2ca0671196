"""Check the project's two wheels in wheels/ after scripts/build-wheels.sh built them.

    python scripts/check-wheels.py wheels pyproject.toml

- exactly one lbproxy and one lbproxy-tools wheel;
- both have the version pyproject.toml gives lbproxy;
- lbproxy-tools requires no lbproxy (a stranger's on a public index) nor itself;
- lbproxy requires no lbproxy-tools, under any extra (no public index holds that name for
  us: a requirement on it would be resolved there, dependency confusion);
- the lbproxy wheel holds lbproxy/ and server_app/ (with the dashboard's static files) and
  no lbproxy_tools (the balancer ships alone, issue 13);
- the lbproxy-tools wheel holds every module and every report template of lbproxy_tools/
  in the checkout (templates are package data: a wheel without them renders no report).

Prints one line per wheel; exits 1 with the reasons otherwise.
"""

from __future__ import annotations

import re
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path


def _metadata(wheel: zipfile.ZipFile) -> dict[str, list[str]]:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    msg = Parser().parsestr(wheel.read(name).decode())
    return {key: msg.get_all(key) or [] for key in ("Name", "Version", "Requires-Dist")}


def check(wheels: Path, pyproject: Path) -> list[str]:
    problems: list[str] = []
    root = pyproject.parent
    found = {dist: sorted(wheels.glob(f"{dist}-*.whl")) for dist in ("lbproxy", "lbproxy_tools")}
    for dist, paths in found.items():
        if len(paths) != 1:
            problems.append(f"{len(paths)} {dist} wheels in {wheels}: {[p.name for p in paths]}")
    if problems:
        return problems
    want = tomllib.loads(pyproject.read_text())["project"]["version"]

    with zipfile.ZipFile(found["lbproxy"][0]) as lb:
        names = lb.namelist()
        meta = _metadata(lb)
        if meta["Version"] != [want]:
            problems.append(f"the lbproxy wheel is {meta['Version']}, pyproject.toml says {want}")
        confusable = [r for r in meta["Requires-Dist"] if re.match(r"lbproxy[-_.]tools\b", r, re.I)]
        if confusable:
            problems.append(f"the lbproxy wheel requires {confusable}: install ./tools instead")
        if not any(n.startswith("lbproxy/") for n in names):
            problems.append("the lbproxy wheel has no lbproxy/ package")
        if not any(n.startswith("server_app/") for n in names):
            problems.append("the lbproxy wheel has no server_app/ package")
        if not any(n.startswith("lbproxy/static/") for n in names):
            problems.append("the lbproxy wheel has no lbproxy/static/ (the dashboard)")
        tooling = [n for n in names if n.startswith("lbproxy_tools")]
        if tooling:
            problems.append(f"the lbproxy wheel carries tooling: {tooling[:5]}")

    with zipfile.ZipFile(found["lbproxy_tools"][0]) as tools:
        names = set(tools.namelist())
        meta = _metadata(tools)
        version = meta["Version"][0] if meta["Version"] else "?"
        if version != want:
            problems.append(f"lbproxy-tools is {version}, lbproxy is {want}")
        ours = [
            r
            for r in meta["Requires-Dist"]
            if re.match(r"lbproxy([-_.]tools)?\b(?![-_.])", r, re.I)
        ]
        if ours:
            problems.append(f"lbproxy-tools requires {ours}: pip would fetch them from an index")
        source = root / "lbproxy_tools"
        expected = sorted(
            p.relative_to(root).as_posix()
            for p in source.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".j2")
        )
        missing = [n for n in expected if n not in names]
        if missing:
            problems.append(f"the lbproxy-tools wheel lacks {missing}")
    return problems


def main(argv: list[str]) -> int:
    wheels, pyproject = Path(argv[1]), Path(argv[2])
    problems = check(wheels, pyproject)
    for p in problems:
        print(f"[check-wheels] {p}", file=sys.stderr)
    if not problems:
        for dist in ("lbproxy", "lbproxy_tools"):
            (path,) = wheels.glob(f"{dist}-*.whl")
            print(f"[check-wheels] ok: {path.name}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
