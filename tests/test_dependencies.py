"""Every distribution the code imports is declared in pyproject.toml."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "holisafe"
# Imported only by code that a user's own set-up provides: the vllm/ backend's server (an extra
# never installed here) and the `safellava` package shipped inside a released model's folder.
PROVIDED_ELSEWHERE = {"vllm", "safellava"}


def imported_top_level_names() -> dict[str, set[str]]:
    """Each third-party top-level module the package imports, with the files that import it."""
    names: dict[str, set[str]] = {}
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found = [node.module]
            else:
                continue
            for name in found:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "holisafe":
                    names.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return names


def requirement_groups() -> dict[str, list[str]]:
    """The distribution names each group declares: "core", then each extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {group: [name_of(r) for r in requirements] for group, requirements in groups.items()}


def name_of(requirement: str) -> str:
    return normalise(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0])


def normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_every_imported_distribution_is_declared():
    installed = packages_distributions()
    if "torch" not in installed:
        pytest.skip("needs every extra installed to map module names to distributions")
    declared = {name for names in requirement_groups().values() for name in names}
    undeclared = {}
    for name, files in imported_top_level_names().items():
        if name in PROVIDED_ELSEWHERE:
            continue
        providers = {normalise(d) for d in installed.get(name, [])}
        if not providers & declared:
            undeclared[name] = sorted(files)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_no_distribution_is_declared_twice():
    groups = requirement_groups()
    core = set(groups["core"])
    for group, names in groups.items():
        repeated = {name for name in names if names.count(name) > 1}
        assert not repeated, f"{group} declares {repeated} more than once"
        if group != "core":
            assert not core & set(names), f"extra {group} repeats core's {core & set(names)}"
