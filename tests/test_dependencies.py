"""What `pip install kvraft` declares matches what the package imports: every third-party
import is a declared dependency (uvloop an optional one), nothing declared goes unused, and
the package ships `py.typed` for the type checkers of its library users."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kvraft"


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0] for requirement in requirements}


def _third_party_imports() -> set[str]:
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name != "kvraft"} - {
        "__future__"
    }


def test_every_import_is_declared_and_every_dependency_imported() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = _requirement_names(project["dependencies"])
    optional = _requirement_names(project["optional-dependencies"]["fast"])
    imported = _third_party_imports()
    assert imported - required == optional  # uvloop: imported when installed
    assert required <= imported, required - imported  # nothing declared for nothing


def test_the_package_is_marked_typed_and_linux_only() -> None:
    assert (PACKAGE / "py.typed").exists()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["kvraft"]
    assert "Operating System :: POSIX :: Linux" in pyproject["project"]["classifiers"]
