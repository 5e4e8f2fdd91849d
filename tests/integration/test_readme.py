"""The README's example runs as written, and its plain ``except`` catches a failed task
(errors leave `client.worker()` bare, not inside an ExceptionGroup); the calls its
"What you get" table shows match the code's signatures."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

import durable_trio as dt
from durable_trio import testing

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    return str(blocks[0])


@pytest.fixture
def readme_database(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example connects with its defaults: $DURABLE_DATABASE_URL, schema "durable"."""
    monkeypatch.setenv("DURABLE_DATABASE_URL", pg_url)
    yield
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS durable CASCADE")


@pytest.mark.usefixtures("readme_database")
def test_the_readme_example_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    code = readme_example()
    assert code.rstrip().endswith("trio.run(main)")
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out == "3 sources agree\n"


@pytest.mark.usefixtures("readme_database")
def test_the_readme_example_catches_a_failed_task_with_a_plain_except(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = readme_example().replace("trio.run(main)", "")
    namespace: dict[str, Any] = {"__name__": "readme"}
    exec(compile(code, str(README), "exec"), namespace)

    def find_sources(query: str) -> list[str]:
        raise dt.NonRetryable(f"no sources for {query!r}")

    namespace["find_sources"] = find_sources  # the task looks it up when the step runs
    trio.run(namespace["main"])
    said = capsys.readouterr().out
    assert said.startswith("no result: task ")
    assert "no sources for 'consensus'" in said


def test_each_row_of_what_you_get_is_one_topic() -> None:
    """One row per topic: a second row of the same name would say less than the first
    (or the opposite), and readers stop at the first."""
    section = README.read_text().split("## What you get", 1)[1].split("\n## ", 1)[0]
    topics = re.findall(r"^\| \*\*(.+?)\*\* \|", section, re.MULTILINE)
    assert len(topics) > 5
    assert sorted(topics) == sorted(set(topics))


# Calls in the table that are not the library's Python API (the SQL API, trio's own).
NOT_CHECKED = {"durable.spawn", "durable.emit_event", "nursery.start"}
ALIASES = {"client": dt.Durable, "worker": dt.Worker}
ROW_ROOTS = {"TaskContext": dt.TaskContext, "Worker": dt.Worker, "Testing": testing}
P = inspect.Parameter


def documented_calls() -> Iterator[tuple[str, str, str]]:
    """(row, dotted name, argument text) of each `name(args)` in the table's code;
    `.fixed(...)` after `RetryStrategy.none()` is `RetryStrategy.fixed(...)`."""
    section = README.read_text().split("## What you get", 1)[1].split("\n## ", 1)[0]
    for row, cells in re.findall(r"^\| \*\*(.+?)\*\* \|(.*)$", section, re.MULTILINE):
        previous = ""
        for span in re.findall(r"`([^`]+)`", cells):
            for name, args in re.findall(r"(?<![\w.])(\.?[A-Za-z_][\w.]*)\(([^()]*)\)", span):
                if name.startswith("."):
                    name = previous.rpartition(".")[0] + name
                previous = name
                yield row, name, args


def resolve(row: str, name: str) -> Any:
    head, *rest = name.split(".")
    roots = [ROW_ROOTS.get(row), dt.Durable, dt]
    starts = [ALIASES[head]] if head in ALIASES else [getattr(r, head, None) for r in roots]
    for obj in starts:
        for part in rest:
            obj = getattr(obj, part, None)
        if obj is not None:
            return obj
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def mismatches(fn: Any, args: str) -> list[str]:
    """How `fn(args)` as documented differs from fn's signature: a bare name is the next
    positional parameter, `name=` a keyword one, anything after `*` keyword-only, and
    every required parameter is shown. Defaults are not compared (some are examples)."""
    params = {n: p for n, p in inspect.signature(fn).parameters.items() if n != "self"}
    positional = [
        n for n, p in params.items() if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
    ]
    wrong: list[str] = []
    shown: list[str] = []
    keyword_only = False
    for token in filter(None, map(str.strip, args.split(","))):
        if token == "...":
            return []
        if token == "*":
            keyword_only = True
            continue
        match = re.fullmatch(r"(\*?)(\w+)\s*(=.*)?", token)
        kind = params[match[2]].kind if match and match[2] in params else None
        if match is None or kind is None:
            ok = False
        elif match[1]:
            ok = kind is P.VAR_POSITIONAL
        elif keyword_only:
            ok = kind is P.KEYWORD_ONLY
        elif match[3]:
            ok = kind is not P.POSITIONAL_ONLY
        else:
            ok = positional[len(shown) : len(shown) + 1] == [match[2]]
        shown.append(match[2] if match else token)
        wrong += [] if ok else [token]
    required = [
        n
        for n, p in params.items()
        if p.default is P.empty and p.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD)
    ]
    return wrong + [f"missing {n}" for n in required if n not in shown]


def test_the_tables_call_signatures_match_the_code() -> None:
    calls = [c for c in documented_calls() if c[1] not in NOT_CHECKED]
    assert len(calls) > 25  # the table was read
    wrong = {
        f"{name}({args})": found
        for row, name, args in calls
        if (found := mismatches(resolve(row, name), args))
    }
    assert wrong == {}
