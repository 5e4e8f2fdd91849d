"""A role with only the grants docs/security.md lists can run everything but change nothing
structural; and passwords never show up in errors, reprs or logs."""

from __future__ import annotations

import logging
import re
import socket
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
import trio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import durable_trio as dt
from durable_trio._db import Pool
from durable_trio.testing import advance_clock, fire_schedules
from support import fetch

SECURITY_MD = Path(__file__).resolve().parents[2] / "docs" / "security.md"
PASSWORD = "Pw-7f3c9e1d-never-shown"


def grants_script() -> str:
    """The psql block between the grants markers of docs/security.md."""
    text = SECURITY_MD.read_text()
    found = re.search(r"<!-- grants:begin -->\s*```sql\n(.*?)```\s*<!-- grants:end -->", text, re.S)
    assert found, "docs/security.md lost its grants block"
    return found[1]


def render_grants(script: str, conn: psycopg.Connection[Any], values: dict[str, str]) -> list[str]:
    """Turn the psql script into statements: drop ``\\set`` lines, fill ``:"var"``."""
    body = "\n".join(line for line in script.splitlines() if not line.startswith("\\set"))
    for name, value in values.items():
        body = body.replace(f':"{name}"', sql.Identifier(value).as_string(conn))
    body = re.sub(r"--[^\n]*", "", body)
    assert ':"' not in body, body
    assert ":'" not in body, body
    return [s.strip() for s in body.split(";") if s.strip()]


@attrs.frozen
class Order:
    item: str
    quantity: int


@dt.task("ship")
async def ship(ctx: dt.TaskContext, order: Order) -> str:
    count = await ctx.step("count", lambda: order.quantity * 2, result_type=int)
    await ctx.sleep_for("settle", 0)
    return f"{count} x {order.item}"


@pytest.fixture
async def granted(client: dt.Durable, pg_url: str, schema: str) -> AsyncIterator[tuple[str, str]]:
    """A LOGIN role made by running docs/security.md's block, after `client` migrated the
    schema as the admin. Returns (role, a conninfo that logs in as it with a password)."""
    role = f"app_{schema}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        values = {"schema": schema, "role": role, "database": admin.info.dbname}
        for statement in render_grants(grants_script(), admin, values):
            # The doc's example password; the test role gets its own.
            admin.execute(statement.replace("'change-me'", f"'{PASSWORD}'").encode())
    try:
        yield role, make_conninfo(pg_url, user=role, password=PASSWORD)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


async def test_grants_block_is_what_the_test_runs() -> None:
    script = grants_script()
    for needed in (
        "GRANT USAGE ON SCHEMA",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA",
        "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA",
    ):
        assert needed in script


async def test_least_privilege_role_runs_tasks(
    granted: tuple[str, str], client: dt.Durable, schema: str
) -> None:
    role, app_url = granted
    async with dt.Durable.connect(app_url, schema=schema, migrate=False) as app:
        # Really connected as the unprivileged role, which owns nothing here.
        async with app.connection() as conn:
            cur = await conn.execute(
                "SELECT current_user AS u, usesuper FROM pg_user WHERE usename = current_user"
            )
            row = await cur.fetchone()
        assert row == {"u": role, "usesuper": False}

        app.register(ship)
        spawned = await app.spawn(ship, Order("crate", 3))
        async with app.worker(dt.WorkerOptions(concurrency=2, poll_interval=0.05)):
            assert await app.wait_result(ship, spawned.task_id, timeout=30) == "6 x crate"
        # Client operations beyond spawn: events, cancel, reads, transactional spawn.
        assert await app.emit_event("nobody-waits", {"x": 1}) == 0
        late = await app.spawn(ship, Order("box", 1), options=dt.SpawnOptions(delay=3600))
        assert await app.cancel(late.task_id, reason="not needed")
        assert (await app.get_task(late.task_id)).state is dt.TaskState.CANCELLED
        async with app.connection() as conn:
            joined = await app.spawn(ship, Order("bag", 2), connection=conn)
            await conn.commit()
        assert (await app.get_task(joined.task_id)).state is dt.TaskState.PENDING
        # Inspection and control.
        assert len((await app.list_tasks(limit=10)).items) == 3
        assert [s.checkpoint for s in await app.steps(spawned.task_id)] != []
        assert (await app.queue_stats()).cancelled == 1
        assert (await app.retry(late.task_id)).attempt == 2
        # Schedules: declared, fired, paused, resumed and removed by the same role.
        await app.schedule("ship-hourly", ship, Order("tin", 1), cron="@hourly")
        await advance_clock(app, 3601)
        assert await fire_schedules(app) == 1
        assert await app.pause_schedule("ship-hourly")
        assert await app.resume_schedule("ship-hourly")
        assert await app.unschedule("ship-hourly")

    # What the admin sees agrees.
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.COMPLETED


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE {schema}.tasks",
        "DROP TABLE {schema}.checkpoints CASCADE",
        "TRUNCATE {schema}.runs",
        "ALTER TABLE {schema}.tasks ADD COLUMN x integer",
        "CREATE TABLE {schema}.intruder (x integer)",
        "DROP FUNCTION {schema}.clock_now()",
        "CREATE OR REPLACE FUNCTION {schema}.clock_now() RETURNS timestamptz"
        " LANGUAGE sql AS $$ SELECT now() $$",
        "DROP SCHEMA {schema} CASCADE",
        "CREATE SCHEMA intruder_schema",
    ],
)
async def test_least_privilege_role_cannot_change_the_schema(
    granted: tuple[str, str], client: dt.Durable, schema: str, pg_url: str, statement: str
) -> None:
    _, app_url = granted
    query = statement.format(schema=sql.Identifier(schema).as_string(None))
    with (
        psycopg.connect(app_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(query.encode())
    # Nothing changed: the admin's client still works on the intact schema.
    client.register(ship)
    spawned = await client.spawn(ship, Order("ok", 1))
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.PENDING


async def test_least_privilege_role_connects_with_migrate_on_a_current_schema(
    granted: tuple[str, str], schema: str
) -> None:
    """A current schema is only read by migrate: the default connect works for the role."""
    _, app_url = granted
    async with dt.Durable.connect(app_url, schema=schema, migrate=True) as app:
        assert await app.migrate() == []
        assert await app.spawn_by_name("x", {})


async def test_least_privilege_role_cannot_migrate(
    granted: tuple[str, str], client: dt.Durable, schema: str
) -> None:
    _, app_url = granted
    latest = await client.store.schema_version()
    await fetch(client, "DELETE FROM @s.migrations WHERE version = %s", latest)
    with pytest.raises(dt.ConfigurationError, match="migrate=False"):
        async with dt.Durable.connect(app_url, schema=schema, migrate=True):
            pass  # pragma: no cover


# -- passwords ----------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _url_forms(port: int) -> list[str]:
    return [
        f"postgresql://someone:{PASSWORD}@127.0.0.1:{port}/app",
        f"postgresql://someone@127.0.0.1:{port}/app?password={PASSWORD}&connect_timeout=5",
        f"host=127.0.0.1 port={port} user=someone password={PASSWORD} dbname=app",
    ]


def _everything_said_about(ex: BaseException) -> str:
    """str, repr and the formatted traceback of an exception and of its whole chain."""
    parts = []
    seen: set[int] = set()
    stack: list[BaseException | None] = [ex]
    while stack:
        one = stack.pop()
        if one is None or id(one) in seen:
            continue
        seen.add(id(one))
        parts += [str(one), repr(one), "".join(traceback.format_exception(one))]
        stack += [one.__cause__, one.__context__]
    return "\n".join(parts)


@pytest.mark.parametrize("form", ["url", "query", "keyvalue"])
async def test_passwords_never_shown(form: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = dict(zip(["url", "query", "keyvalue"], _url_forms(_closed_port()), strict=True))[form]
    assert conninfo_to_dict(url)["password"] == PASSWORD

    with pytest.raises(dt.DatabaseUnavailable) as caught:
        async with dt.Durable.connect(url, schema="durable"):
            pass
    said = _everything_said_about(caught.value)
    assert PASSWORD not in said
    assert "127.0.0.1" in str(caught.value)  # the message still says where it tried

    # Reprs of the objects holding the URL.
    client = dt.Durable(url, queue="default", schema="durable", pool_size=1)
    pool = Pool(url, max_size=1)
    for shown in (repr(client), str(client), repr(pool), repr(client.new_worker())):
        assert PASSWORD not in shown

    # A worker against the unreachable database logs its trouble, never the password.
    seen = trio.Event()
    wanted = {"durable_trio.sql", "durable_trio.worker"}

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            wanted.discard(record.name)
            if not wanted:
                seen.set()

    watch = Watch()
    logging.getLogger("durable_trio").addHandler(watch)
    try:
        worker = client.new_worker(dt.WorkerOptions(poll_interval=0.05))
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                await seen.wait()  # the listener and the claim loop both complained
                assert not worker.healthy
                worker.shutdown()
    finally:
        logging.getLogger("durable_trio").removeHandler(watch)
        await pool.aclose()
    assert caplog.records
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += _everything_said_about(record.exc_info[1])
        assert PASSWORD not in text, (record.name, text)
    assert PASSWORD not in caplog.text
