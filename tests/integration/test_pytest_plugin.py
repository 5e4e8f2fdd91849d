"""The pytest plugin, as a user's project sees it: registered by the ``pytest11`` entry
point alone (no conftest), its fixtures give a server, a client on a schema of its own
that is dropped after each test, and the database clock. docs/testing.md shows the
example that the suite runs (examples/test_order_workflow.py)."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import psycopg
import pytest

import durable_trio.testing
from durable_trio import _ephemeral
from durable_trio.testing import pytest_plugin

ROOT = Path(__file__).resolve().parents[2]

USER_TESTS = """
from datetime import timedelta
from pathlib import Path

import durable_trio as dt
from durable_trio.testing import DatabaseClock, run_until_idle

SEEN = Path(__file__).parent / "schemas.txt"


@dt.task("nap")
async def nap(ctx: dt.TaskContext, p: None) -> str:
    await ctx.sleep_for("nap", timedelta(hours=2))
    return "awake"


async def test_one(durable_client: dt.Durable, durable_schema: str, durable_clock: DatabaseClock):
    with SEEN.open("a") as out:
        out.write(durable_schema + "\\n")
    assert durable_client.schema == durable_schema
    durable_client.register(nap)
    spawned = await durable_client.spawn(nap, None)
    assert await run_until_idle(durable_client) == 1
    await durable_clock.advance(timedelta(hours=2))
    assert await run_until_idle(durable_client) == 1
    assert await durable_client.wait_result(nap, spawned.task_id, timeout=5) == "awake"


async def test_two(durable_client: dt.Durable, durable_schema: str, durable_server: str):
    with SEEN.open("a") as out:
        out.write(durable_schema + "\\n")
    assert durable_client.url == durable_server
    info = await durable_client.store.now()  # a schema of its own, migrated
    assert info is not None
"""


def test_the_entry_point_names_the_plugin() -> None:
    found = [ep for ep in entry_points(group="pytest11") if ep.name == "durable_trio"]
    assert [ep.value for ep in found] == ["durable_trio.testing.pytest_plugin"]
    assert found[0].load() is pytest_plugin


def test_ephemeral_postgres_is_public_under_testing() -> None:
    assert durable_trio.testing.EphemeralPostgres is _ephemeral.EphemeralPostgres
    assert durable_trio.testing.PostgresUnavailable is _ephemeral.PostgresUnavailable
    assert "EphemeralPostgres" in durable_trio.testing.__all__


def test_a_users_project_gets_the_fixtures_and_a_fresh_schema_per_test(
    pytester: pytest.Pytester, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(pytest_plugin.URL_ENV, pg_url)  # the session's server, not another
    pytester.makeini("[pytest]\ntrio_mode = true\nfilterwarnings = error\n")
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)

    schemas = (pytester.path / "schemas.txt").read_text().split()
    assert len(schemas) == 2
    assert schemas[0] != schemas[1]
    with psycopg.connect(pg_url) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY (%s)", (schemas,)
        ).fetchall()
    assert left == []  # each dropped after its test


def test_the_docs_show_the_example_that_the_suite_runs() -> None:
    docs = (ROOT / "docs" / "testing.md").read_text()
    example = (ROOT / "examples" / "test_order_workflow.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", docs, re.DOTALL)
    assert example in blocks
    assert "docs/testing.md" in (ROOT / "README.md").read_text()
