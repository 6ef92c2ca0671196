"""The balancer ships alone: the lbproxy distribution and its image carry no tooling.

The load client, ``lbproxy analyze`` and the launch helpers live in ``lbproxy_tools``
(the ``lbproxy-tools`` distribution, ``pip install ./tools`` from a checkout).
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
import tomllib
from pathlib import Path

import pytest
from setuptools import find_packages

from lbproxy.cli import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
#: Imports that belong to the tooling, never to the balancer. (numpy is the balancer's
#: since issue 10: the build worker fills the 4,194,287-entry Maglev table with it.)
TOOLING = ("lbproxy_tools", "tqdm", "matplotlib", "jinja2")


def test_the_lbproxy_distribution_finds_only_the_balancer_packages() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    found = find_packages(str(ROOT), include=include)
    assert "lbproxy" in found and "server_app" in found
    assert not [p for p in found if p.startswith("lbproxy_tools")], found
    assert not [d for d in config["project"]["dependencies"] if d.startswith(TOOLING)]


def test_no_balancer_module_imports_the_tooling() -> None:
    offenders = []
    for path in sorted((ROOT / "lbproxy").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith(TOOLING)]
    assert offenders == []


@pytest.mark.parametrize("command", ["loadtest", "analyze"])
def test_a_tool_command_without_the_tools_says_what_to_install(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A None entry in sys.modules is how Python spells "this module cannot be imported":
    # the same ModuleNotFoundError an install of lbproxy without ./tools raises.
    for name in [m for m in sys.modules if m.startswith("lbproxy_tools")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lbproxy_tools", None)
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--url", "http://127.0.0.1:9", "--help"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install ./tools" in err
    assert "lbproxy[tools]" not in err  # no such extra: it would resolve from an index


def test_tests_and_benches_take_process_helpers_from_the_tools() -> None:
    """One home for the process and port helpers: lbproxy_tools.launcher (which shares the
    process backend's port picker), not the balancer's backend module."""
    offenders = []
    for path in sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "lbproxy.backends.process":
                helpers = [a.name for a in node.names if a.name != "ProcessBackend"]
                if helpers:
                    offenders.append(f"{path.relative_to(ROOT)}: {', '.join(helpers)}")
    assert offenders == []


def test_the_tools_distribution_ships_every_package_and_template() -> None:
    """tools/pyproject.toml lists its packages by hand: a new subpackage or a report template
    missing from it would be absent from the wheel, though a checkout (editable) works.
    scripts/check-wheels.py checks the built wheels the same way (scripts/build-wheels.sh)."""
    tools = tomllib.loads((ROOT / "tools" / "pyproject.toml").read_text())
    setuptools_cfg = tools["tool"]["setuptools"]
    listed = set(setuptools_cfg["packages"])
    code = set(find_packages(str(ROOT), include=["lbproxy_tools", "lbproxy_tools.*"]))
    assert code <= listed, sorted(code - listed)
    data = setuptools_cfg.get("package-data", {})
    source = ROOT / "lbproxy_tools"
    unshipped = []
    for path in sorted(source.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".py", ".pyc"):
            continue
        package = ".".join(path.parent.relative_to(ROOT).parts)
        if package not in listed or not any(path.match(g) for g in data.get(package, [])):
            unshipped.append(str(path.relative_to(ROOT)))
    assert unshipped == []
    assert any(p.suffix == ".j2" for p in source.rglob("*")), "the report templates moved?"
    # The two distributions are released together: one version.
    lbproxy = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert tools["project"]["version"] == lbproxy["project"]["version"]


def _requirement_name(requirement: str) -> str:
    """The normalised project name of a PEP 508 requirement (PEP 503 normalisation)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group(1)).lower()


def test_no_requirement_names_a_distribution_only_this_checkout_builds() -> None:
    """Dependency confusion: a requirement on lbproxy-tools, a name no public index holds for
    us, would be resolved from whatever index pip is configured with, so anyone who
    registered that name there would have their code installed by `pip install lbproxy[...]`.
    The tools are installed from the checkout (`pip install ./tools`, `make install`)
    instead; lbproxy's own extras may name lbproxy itself (resolved to the project being
    installed), nothing else of ours."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(config["dependencies"])
    for extra in config.get("optional-dependencies", {}).values():
        requirements += extra
    ours = {"lbproxy-tools"}
    offenders = [r for r in requirements if _requirement_name(r) in ours]
    assert offenders == []


@pytest.mark.parametrize("pyproject", ["pyproject.toml", "tools/pyproject.toml"])
def test_the_license_is_an_spdx_expression(pyproject: str) -> None:
    """PEP 639: `license = { text = ... }` is deprecated, and setuptools stops building
    projects that use it on 2027-02-18 (its own warning). The SPDX string form needs
    setuptools 77 or later as the build backend (pip's build isolation, and the wheels/
    that build-wheels.sh fetches from build-system.requires for the images)."""
    config = tomllib.loads((ROOT / pyproject).read_text())
    assert config["project"]["license"] == "MIT"
    requires = config["build-system"]["requires"]
    (setuptools_req,) = [r for r in requires if r.startswith("setuptools")]
    floor = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools_req)
    assert floor and int(floor.group(1)) >= 77, setuptools_req


def test_the_tools_require_nothing_only_this_checkout_builds() -> None:
    """Dependency confusion again, the other way: `lbproxy` is not our name on the public
    index either, so a requirement on it in tools/pyproject.toml made `pip install ./tools`
    alone fetch whatever a stranger published as lbproxy. The tools declare no requirement
    on it; lbproxy_tools says at import what to install instead (next test)."""
    config = tomllib.loads((ROOT / "tools" / "pyproject.toml").read_text())["project"]
    requirements = list(config["dependencies"])
    for extra in config.get("optional-dependencies", {}).values():
        requirements += extra
    offenders = [r for r in requirements if _requirement_name(r) in ("lbproxy", "lbproxy-tools")]
    assert offenders == []


def test_the_tools_without_lbproxy_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith("lbproxy_tools")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lbproxy", None)  # as if only ./tools were installed
    with pytest.raises(ImportError, match=r"pip install \. \./tools") as raised:
        importlib.import_module("lbproxy_tools")
    assert "lbproxy-tools needs lbproxy" in str(raised.value)
