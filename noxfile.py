"""Developer sessions: ``nox -s tests lint typecheck docs bench`` (``nox -l`` lists them)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11", "3.12", "3.13"]


@nox.session(python=PYTHON[0])
def tests(session: nox.Session) -> None:
    """The whole test suite, as the README and CI run it."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON[0])
def lint(session: nox.Session) -> None:
    """ruff, and the import-linter contracts that keep smtptrio.protocol pure."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", "smtptrio", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("lint-imports")


@nox.session(python=PYTHON[0])
def typecheck(session: nox.Session) -> None:
    """mypy --strict against trio's own inline types (trio-typing is never installed)."""
    session.install("-e", ".[typecheck,test]")
    session.run("mypy", "--strict", "smtptrio")


@nox.session(python=PYTHON[0])
def docs(session: nox.Session) -> None:
    """Build the Sphinx docs with warnings as errors, then run their doctests."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "doctest", "docs", "docs/_build/doctest"
    )


@nox.session(python=PYTHON[0])
def bench(session: nox.Session) -> None:
    """smtptrio and aiosmtpd side by side under the same load; prints medians and ratios."""
    session.install("-e", ".", "aiosmtpd==1.4.6")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session(python=PYTHON[0])
def fuzz(session: nox.Session) -> None:
    """A long hypothesis run of the engine and connection properties (not in the default suite)."""
    session.install("-e", ".[test]")
    session.run(
        "python", "-m", "pytest", "tests/protocol/test_properties.py",
        "tests/server/test_stateful.py", "-p", "no:cacheprovider",
        "--hypothesis-profile=fuzz", *session.posargs,
    )
