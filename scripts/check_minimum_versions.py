"""Install the oldest versions pyproject.toml allows and run the client tests against them.

A lower bound that is too low is a bug nobody sees (the developers' venv has the newest
releases): e.g. `aiohttp>=3.9` was declared while the client needed 3.11. This script
derives a constraints file from the `>=` bounds of the runtime dependencies and of the test
tools the client tests use (`name>=X` becomes `name==X`), installs exactly those into a
throwaway virtualenv from PyPI, and runs the client tests there against this source tree.
Transitive dependencies (multidict, frozenlist, ...) are whatever pip picks: only the bounds
kvraft declares are under test.

    python3 scripts/check_minimum_versions.py      # or: make test-minimums

Exit status: pytest's (0: the declared minimums work), or 1 when the install fails. The
virtualenv is removed afterwards, on failure too.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CLIENT_TESTS = [
    "tests/test_client.py",
    "tests/test_watch_client.py",
    "tests/test_txn_client.py",
    # `kvraft certs init` and kvraft.tls: the cryptography bound (certificates read back with
    # the validity accessors it brought).
    "tests/test_certs.py",
]

TEST_TOOLS = {"pytest", "pytest-asyncio", "hypothesis"}
"""The `dev` extras the client tests run with (the linters, hadolint, selenium are not)."""

UNRAISABLE_IGNORED = ["-W", "ignore::pytest.PytestUnraisableExceptionWarning"]
"""Here, and only here, a resource garbage-collected unclosed is not a failure: pytest-asyncio
0.24 (the declared minimum) leaves an event loop and its socket pair unclosed at teardown, and
whichever later test the garbage collector happens to run in failed for it, about one run in
ten. This check is about whether the oldest versions *work*; leaks are the main suite's to
catch, where every warning is an error (pyproject.toml's filterwarnings) with current tools."""

_LOWER_BOUND = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][A-Za-z0-9.]*)\s*$")


def requirements() -> list[str]:
    """The runtime dependencies and the client tests' tools, as pyproject.toml declares them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    tools = [
        requirement
        for requirement in project["optional-dependencies"]["dev"]
        if re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0] in TEST_TOOLS
    ]
    return [*project["dependencies"], *tools]


def constraints(declared: list[str]) -> list[str]:
    """`name==X` for every `name>=X`; a requirement without a lower bound is an error (it
    could not be checked)."""
    pinned = []
    for requirement in declared:
        match = _LOWER_BOUND.match(requirement)
        if match is None:
            raise SystemExit(f"check_minimum_versions: {requirement!r} has no plain >= bound")
        pinned.append(f"{match[1]}=={match[2]}")
    return pinned


def main() -> int:
    declared = requirements()
    pinned = constraints(declared)
    print("minimums:", ", ".join(pinned), flush=True)
    with tempfile.TemporaryDirectory(prefix="kvraft-minimums-") as scratch:
        venv = Path(scratch) / "venv"
        constraints_path = Path(scratch) / "constraints.txt"
        constraints_path.write_text("\n".join(pinned) + "\n", encoding="utf-8")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        python = str(venv / "bin" / "python")
        install = subprocess.run(
            [
                python,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--only-binary=:all:",  # a minimum without a wheel for this Python is a finding
                "--constraint",
                str(constraints_path),
                *declared,
            ],
            check=False,
        )
        if install.returncode != 0:
            print("check_minimum_versions: the declared minimums cannot be installed", flush=True)
            return 1
        tests = subprocess.run(
            [
                python,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                *UNRAISABLE_IGNORED,
                *CLIENT_TESTS,
            ],
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": scratch},
            check=False,
        )
        return tests.returncode


if __name__ == "__main__":
    sys.exit(main())
