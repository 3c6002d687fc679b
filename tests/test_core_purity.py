"""The Raft core does no IO, reads no clock and uses no global randomness.

That is what lets the same core run in the daemon and, thousands of times a
minute, in the deterministic simulator (see ARCHITECTURE: "the core is pure").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "kvraft" / "raft"
PURE_MODULES = [*sorted(CORE.glob("*.py")), CORE.parent / "statemachine.py"]

FORBIDDEN_MODULES = {
    "asyncio", "socket", "selectors", "ssl", "time", "datetime", "os", "io", "pathlib",
    "shutil", "subprocess", "threading", "multiprocessing", "tempfile", "aiofiles",
    "aiohttp", "logging", "secrets", "uuid",
}  # fmt: skip
# `random` may be imported only for the `random.Random` type the shell injects.
RANDOM_ALLOWED_ATTRIBUTES = {"Random"}
FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "__import__"}


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: p.name)
def test_core_module_imports_no_io_clock_or_concurrency(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    assert not (_imports(tree) & FORBIDDEN_MODULES), path


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: p.name)
def test_core_module_uses_only_injected_randomness(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "random":
            pytest.fail(f"{path.name}: 'from random import ...' reaches the global generator")
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
        ):
            assert node.attr in RANDOM_ALLOWED_ATTRIBUTES, (
                f"{path.name}:{node.lineno}: random.{node.attr} uses global randomness"
            )


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: p.name)
def test_core_module_calls_no_io_builtins(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, f"{path.name}:{node.lineno}"


def test_the_checks_see_the_core() -> None:
    names = {p.name for p in PURE_MODULES}
    assert {"core.py", "log.py", "messages.py", "progress.py", "ready.py"} <= names
