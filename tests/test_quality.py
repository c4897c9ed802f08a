"""The project's own rules, checked on every test run: lint, layering, types, docs examples.

These run the same tools as ``nox -s lint typecheck docs`` so CI (which runs the test suite)
cannot land code that breaks them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is part of the test extra: pip install -e '.[test]'"
    return found


def test_ruff_finds_nothing() -> None:
    result = run(tool("ruff"), "check", "smtptrio", "tests", "benchmarks", "examples", "noxfile.py")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_keep_the_protocol_core_pure() -> None:
    result = run(tool("lint-imports"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = run(sys.executable, "-m", "mypy", "--strict", "smtptrio")
    assert result.returncode == 0, result.stdout + result.stderr


def test_trio_typing_is_not_installed() -> None:
    """trio-typing's trio-stubs shadow trio's inline types (see docs/design-notes.rst)."""
    from importlib.util import find_spec

    assert find_spec("trio_typing") is None and find_spec("trio-stubs") is None


def test_docs_build_and_their_doctests_pass(tmp_path: Path) -> None:
    sphinx = tool("sphinx-build")
    for builder in ("html", "doctest"):
        out = str(tmp_path / builder)
        result = run(sphinx, "-q", "-W", "--keep-going", "-b", builder, "docs", out)
        assert result.returncode == 0, f"{builder}:\n{result.stdout}{result.stderr}"
