"""The README's example runs as written, and its plain ``except`` catches a failed task
(errors leave `client.worker()` bare, not inside an ExceptionGroup)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

import durable_trio as dt

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
