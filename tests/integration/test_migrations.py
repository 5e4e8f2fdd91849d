"""Migrations: idempotent, safe when processes race, and producing exactly the schema we
expect (any new table, index or function must be added to the lists below on purpose)."""

from __future__ import annotations

import asyncio
import lzma
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql

import durable_trio as dt
import durable_trio.aio
import durable_trio.sync
from durable_trio._core.ids import uuid7
from durable_trio._schema import functions, migrations, render, sql_dir
from durable_trio.testing import fire_schedules
from support import FIXED_2_5, fetch, only_task_settings

EXPECTED_TABLES = {
    "checkpoints",
    "functions",
    "clock",
    "deadlines",
    "events",
    "migrations",
    "runs",
    "schedules",
    "tasks",
    "waits",
    "workers",
}

# (table, index) including primary keys and unique constraints.
EXPECTED_INDEXES = {
    ("checkpoints", "checkpoints_pkey"),
    ("clock", "clock_pkey"),
    ("deadlines", "deadlines_due"),
    ("deadlines", "deadlines_pkey"),
    ("events", "events_pkey"),
    ("functions", "functions_pkey"),
    ("migrations", "migrations_pkey"),
    ("runs", "runs_claim"),
    ("runs", "runs_due"),
    ("runs", "runs_ended_at"),
    ("runs", "runs_ended_task"),
    ("runs", "runs_leased"),
    ("runs", "runs_pkey"),
    ("runs", "runs_task_id_attempt_key"),
    ("tasks", "tasks_created"),
    ("schedules", "schedules_due"),
    ("schedules", "schedules_pkey"),
    ("tasks", "tasks_idempotency"),
    ("tasks", "tasks_name_list"),
    ("tasks", "tasks_parent"),
    ("tasks", "tasks_pkey"),
    ("tasks", "tasks_queue_list"),
    ("waits", "waits_event"),
    ("waits", "waits_pkey"),
    ("workers", "workers_pkey"),
}

# sql/functions/ declares them: one file per function, and nothing else (no overloads).
EXPECTED_FUNCTIONS = {name for name, _, _ in functions()}

# Indexes that must stay partial (finished rows out of the claim path).
PARTIAL_INDEXES = {
    "runs_claim",
    "runs_due",
    "runs_ended_at",
    "runs_ended_task",
    "runs_leased",
    "schedules_due",
    "tasks_idempotency",
    "tasks_parent",
}


def _catalog(url: str, schema: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            )
        }
        indexes = {
            (r[0], r[1])
            for r in conn.execute(
                "SELECT tablename, indexname FROM pg_indexes WHERE schemaname = %s", (schema,)
            )
        }
        partial = {
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND i.indpred IS NOT NULL",
                (schema,),
            )
        }
        functions = [
            r[0]
            for r in conn.execute(
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = %s",
                (schema,),
            )
        ]
        others = [
            (r[0], r[1])
            for r in conn.execute(
                "SELECT c.relname, c.relkind FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind NOT IN ('r', 'i')",
                (schema,),
            )
        ]
        versions = [
            r[0]
            for r in conn.execute(
                sql.SQL("SELECT version FROM {}.migrations ORDER BY version").format(
                    sql.Identifier(schema)
                )
            )
        ]
    return {
        "tables": tables,
        "indexes": indexes,
        "partial": partial,
        "functions": functions,
        "others": others,
        "versions": versions,
    }


def _schema_exists(url: str, schema: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)
        ).fetchone()
    assert row is not None
    return bool(row[0])


async def test_migrated_schema_has_exactly_the_expected_objects(
    client: dt.Durable, pg_url: str
) -> None:
    found = await trio.to_thread.run_sync(_catalog, pg_url, client.schema)
    assert found["tables"] == EXPECTED_TABLES
    assert found["indexes"] == EXPECTED_INDEXES
    assert sorted(found["functions"]) == sorted(EXPECTED_FUNCTIONS)  # no overloads either
    assert found["partial"] == PARTIAL_INDEXES
    # No sequences, views, composite types, etc.: only the tables and their indexes.
    assert found["others"] == []
    assert found["versions"] == [v for v, _, _ in migrations()]


async def test_hot_updated_tables_leave_room_on_their_pages(client: dt.Durable) -> None:
    """A task's row is updated twice in quick succession: with room left on its page the
    second update stays HOT (no new index entries)."""
    rows = await fetch(
        client,
        "SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname IN ('tasks', 'runs')",
        client.schema,
    )
    options = {r["relname"]: set(r["reloptions"] or []) for r in rows}
    assert "fillfactor=50" in options["tasks"]
    assert "fillfactor=80" in options["runs"]


async def test_migrate_is_idempotent(client: dt.Durable, pg_url: str) -> None:
    before = await trio.to_thread.run_sync(_catalog, pg_url, client.schema)
    assert await client.migrate() == []
    assert await client.migrate() == []
    assert await client.store.schema_version() == max(v for v, _, _ in migrations())
    assert await trio.to_thread.run_sync(_catalog, pg_url, client.schema) == before


@asynccontextmanager
async def unopened(pg_url: str, schema: str) -> AsyncIterator[dt.Durable]:
    """A client made but not opened (as `durable-trio migrate` makes one): `connect` with
    migrate=False refuses a schema that is not current, so migrating one by hand, to see
    what was applied, starts here."""
    client = dt.Durable(pg_url, queue="default", schema=schema, pool_size=2)
    try:
        yield client
    finally:
        await client._ends.aclose()  # wait_result's listener
        await client.store.pool.aclose()


async def test_first_migrate_applies_every_migration(pg_url: str, schema: str) -> None:
    assert not await trio.to_thread.run_sync(_schema_exists, pg_url, schema)
    async with unopened(pg_url, schema) as client:
        assert await client.store.schema_version() is None
        assert await client.migrate() == [v for v, _, _ in migrations()]
        assert await client.migrate() == []
    # A client opened later on a migrated schema applies nothing.
    async with dt.Durable.connect(pg_url, schema=schema) as again:
        assert await again.migrate() == []


async def test_concurrent_migrations_on_a_fresh_schema(pg_url: str, schema: str) -> None:
    count = 4
    connected = 0
    all_connected = trio.Event()
    applied: list[list[int]] = []

    async def run_one() -> None:
        nonlocal connected
        async with unopened(pg_url, schema) as client:
            await client.store.schema_version()  # connected
            connected += 1
            if connected == count:
                all_connected.set()
            # Every client is connected before any migrates, so they really race.
            await all_connected.wait()
            applied.append(await client.migrate())

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(run_one)

    everything = [v for v, _, _ in migrations()]
    assert len(applied) == count
    assert sorted(applied, key=len, reverse=True) == [everything] + [[]] * (count - 1)
    found = await trio.to_thread.run_sync(_catalog, pg_url, schema)
    assert found["tables"] == EXPECTED_TABLES
    assert sorted(found["functions"]) == sorted(EXPECTED_FUNCTIONS)
    assert found["versions"] == everything


def _drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def test_migrated_schema_works_for_two_schemas_side_by_side(
    client: dt.Durable, pg_url: str
) -> None:
    other_schema = client.schema + "_b"
    try:
        async with dt.Durable.connect(pg_url, schema=other_schema) as other:
            a = await client.spawn_by_name("x", {})
            b = await other.spawn_by_name("x", {})
            with pytest.raises(dt.TaskNotFound):
                await other.get_task(a.task_id)
            with pytest.raises(dt.TaskNotFound):
                await client.get_task(b.task_id)
    finally:
        await trio.to_thread.run_sync(_drop_schema, pg_url, other_schema)


async def test_an_unmigrated_schema_is_a_configuration_error(pg_url: str, schema: str) -> None:
    @dt.task("lonely")
    async def lonely(ctx: dt.TaskContext, p: None) -> None:
        return None

    with pytest.raises(dt.ConfigurationError, match=r"does not exist.*migrate=True"):
        async with dt.Durable.connect(pg_url, schema=schema, migrate=False):
            pass  # pragma: no cover
    # A client whose schema went missing after it opened says so at each statement.
    async with unopened(pg_url, schema) as client:
        client.register(lonely)
        with pytest.raises(dt.ConfigurationError, match=r"missing or older.*migrate=True"):
            await client.spawn(lonely, None)
        with pytest.raises(dt.ConfigurationError, match=r"does not exist.*migrate=True"):
            async with client.worker():
                pass  # pragma: no cover
        with pytest.raises(dt.ConfigurationError, match="missing or older"):
            await client.get_task(uuid7())
    assert not await trio.to_thread.run_sync(_schema_exists, pg_url, schema)


async def test_a_schema_older_than_the_library_is_a_configuration_error(
    client: dt.Durable, pg_url: str
) -> None:
    *_, previous, latest = sorted(v for v, _, _ in migrations())  # numbers may skip
    await fetch(client, "DELETE FROM @s.migrations WHERE version = %s", latest)
    with pytest.raises(dt.ConfigurationError, match=f"version {previous}.*version {latest}"):
        async with client.worker():
            pass  # pragma: no cover


def _open_without_migrating(kind: str, url: str, schema: str) -> None:
    """Open and close a client of `kind` with migrate=False (from a thread of its own)."""
    if kind == "trio":

        async def trio_client() -> None:
            async with dt.Durable.connect(url, schema=schema, migrate=False):
                pass

        trio.run(trio_client)
    elif kind == "sync":
        durable_trio.sync.Durable.connect(url, schema=schema, migrate=False).close()
    else:

        async def aio_client() -> None:
            async with durable_trio.aio.Durable.connect(url, schema=schema, migrate=False):
                pass

        loop = asyncio.SelectorEventLoop()  # not the policy's: trio_asyncio replaces it
        try:
            loop.run_until_complete(aio_client())
        finally:
            loop.close()


@pytest.mark.parametrize("kind", ["trio", "sync", "aio"])
async def test_connect_without_migrate_refuses_a_missing_or_older_schema_at_once(
    pg_url: str, schema: str, kind: str
) -> None:
    """docs/operations.md: such a client fails at connect, not at its first statement."""
    with pytest.raises(dt.ConfigurationError, match=r"does not exist.*migrate=True"):
        await trio.to_thread.run_sync(_open_without_migrating, kind, pg_url, schema)
    assert not await trio.to_thread.run_sync(_schema_exists, pg_url, schema)
    async with dt.Durable.connect(pg_url, schema=schema) as client:
        *_, previous, latest = sorted(v for v, _, _ in migrations())
        await fetch(client, "DELETE FROM @s.migrations WHERE version = %s", latest)
    with pytest.raises(dt.ConfigurationError, match=f"version {previous}.*version {latest}"):
        await trio.to_thread.run_sync(_open_without_migrating, kind, pg_url, schema)
    async with dt.Durable.connect(pg_url, schema=schema):  # migrated again: opens
        await trio.to_thread.run_sync(_open_without_migrating, kind, pg_url, schema)


# -- function definitions: one file each, re-created when the file changes ------------------


def _definitions(url: str, schema: str) -> dict[str, str]:
    """pg_get_functiondef of every function in `schema`, with the schema name masked."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s",
            (schema,),
        ).fetchall()
    return {name: text.replace(schema, "<schema>") for name, text in rows}


def _file_definitions(url: str) -> dict[str, str]:
    """What each file in sql/functions defines, created alone in a scratch schema."""
    scratch = f"defs_{uuid7().hex[:12]}"
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(scratch)))
            for _, text, _ in functions():
                conn.execute(render(text, scratch).encode())
        return _definitions(url, scratch)
    finally:
        _drop_schema(url, scratch)


async def test_the_database_functions_are_the_files(client: dt.Durable, pg_url: str) -> None:
    installed = await trio.to_thread.run_sync(_definitions, pg_url, client.schema)
    expected = await trio.to_thread.run_sync(_file_definitions, pg_url)
    assert sorted(installed) == sorted(expected)
    for name, definition in expected.items():
        assert installed[name] == definition, name


def test_every_function_file_defines_its_own_name_only() -> None:
    files = sorted(p.stem for p in (sql_dir() / "functions").glob("*.sql"))
    assert files == sorted(EXPECTED_FUNCTIONS)
    # Migrations hold tables, indexes, triggers and data; a function lives in its file.
    for version, name, text in migrations():
        assert "CREATE FUNCTION" not in text.upper().replace("OR REPLACE ", ""), (version, name)


async def test_a_function_changed_in_the_database_is_put_back_by_migrate(
    client: dt.Durable, pg_url: str
) -> None:
    await fetch(
        client,
        "CREATE OR REPLACE FUNCTION @s.notify_queue(p_queue text) RETURNS void"
        " LANGUAGE sql AS $$ SELECT NULL::void $$",
    )
    # An unchanged file is not re-applied: the digest is what migrate compares.
    await client.migrate()
    changed = await trio.to_thread.run_sync(_definitions, pg_url, client.schema)
    assert "SELECT NULL::void" in changed["notify_queue"]
    # A file whose text differs from the installed digest is re-created.
    await fetch(client, "UPDATE @s.functions SET digest = 'old' WHERE name = 'notify_queue'")
    with pytest.raises(dt.ConfigurationError, match=r"other definitions of notify_queue"):
        await client.store.check_schema()
    assert await client.migrate() == []
    await client.store.check_schema()
    expected = await trio.to_thread.run_sync(_file_definitions, pg_url)
    again = await trio.to_thread.run_sync(_definitions, pg_url, client.schema)
    assert again["notify_queue"] == expected["notify_queue"]


async def test_a_new_parameter_list_or_return_type_replaces_the_old_function(
    client: dt.Durable, pg_url: str
) -> None:
    await fetch(client, "DROP FUNCTION @s.notify_queue(text)")
    # An older definition with other parameters, and one with another return type.
    await fetch(
        client,
        "CREATE FUNCTION @s.notify_queue(p_queue text, p_extra int) RETURNS void"
        " LANGUAGE sql AS $$ SELECT NULL::void $$",
    )
    await fetch(client, "DROP FUNCTION @s.event_lock_key(text, text)")
    await fetch(
        client,
        "CREATE FUNCTION @s.event_lock_key(p_queue text, p_event text) RETURNS integer"
        " LANGUAGE sql AS $$ SELECT 1 $$",
    )
    await fetch(client, "UPDATE @s.functions SET digest = 'old'")
    await client.migrate()
    found = await trio.to_thread.run_sync(_catalog, pg_url, client.schema)
    assert sorted(found["functions"]) == sorted(EXPECTED_FUNCTIONS)
    installed = await trio.to_thread.run_sync(_definitions, pg_url, client.schema)
    expected = await trio.to_thread.run_sync(_file_definitions, pg_url)
    assert installed == expected


async def test_a_function_whose_file_is_gone_is_dropped(client: dt.Durable, pg_url: str) -> None:
    await fetch(
        client,
        "CREATE FUNCTION @s.retired() RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$",
    )
    await fetch(client, "INSERT INTO @s.functions (name, digest) VALUES ('retired', 'x')")
    await client.migrate()
    found = await trio.to_thread.run_sync(_catalog, pg_url, client.schema)
    assert "retired" not in found["functions"]
    rows = await fetch(client, "SELECT name FROM @s.functions WHERE name = 'retired'")
    assert rows == []


def _load_fixture(conn: psycopg.Connection[Any], schema: str, name: str) -> None:
    """Run a frozen schema script from tests/fixtures (see its README) into `schema`."""
    script = Path(__file__).resolve().parents[1] / "fixtures" / name
    with lzma.open(script, "rt", encoding="utf-8") as file:
        conn.execute(render(file.read(), schema).encode())


def _build_version_3(url: str, schema: str) -> None:
    """A schema as durable_trio 0.1.0 at schema version 3 left it (functions inside the
    migrations, no functions table), with a task pending in it."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        _load_fixture(conn, schema, "schema_v3.sql.xz")
        conn.execute(
            sql.SQL(
                "SELECT * FROM {}.spawn_task(%s, %s, 'default', 'upgrade', 'null', '{{}}',"
                ' \'{{"kind": "none"}}\', 1, 0, NULL, NULL, NULL, NULL, NULL, NULL)'
            ).format(sql.Identifier(schema)),
            (uuid7(), uuid7()),
        )


async def test_a_version_3_schema_upgrades_and_keeps_its_work(pg_url: str, schema: str) -> None:
    await trio.to_thread.run_sync(_build_version_3, pg_url, schema)

    @dt.task("upgrade")
    async def upgrade(ctx: dt.TaskContext, params: None) -> str:
        return await ctx.step("s", lambda: "done")

    with pytest.raises(dt.ConfigurationError, match=r"needs version|other definitions of"):
        async with dt.Durable.connect(pg_url, schema=schema, migrate=False):
            pass  # pragma: no cover
    async with unopened(pg_url, schema) as client:
        # Behind the library's migrations, or (at the same version) with other functions.
        with pytest.raises(dt.ConfigurationError, match=r"needs version|other definitions of"):
            await client.store.check_schema()
        await client.migrate()
        await client.store.check_schema()
        installed = await trio.to_thread.run_sync(_definitions, pg_url, schema)
        assert installed == await trio.to_thread.run_sync(_file_definitions, pg_url)
        client.register(upgrade)
        [old] = await fetch(client, "SELECT task_id FROM @s.tasks")
        fresh = await client.spawn(upgrade, None)
        async with client.worker():
            for task_id in (old["task_id"], fresh.task_id):
                assert await client.wait_result(upgrade, task_id, timeout=30) == "done"


# A schedule as schema version 8 stored it: its spawn settings in six columns.
_VERSION_8_SCHEDULE = """
INSERT INTO {}.schedules (schedule_id, queue, task_name, params, headers, retry,
    max_attempts, priority, max_pending_delay, max_duration, cron, timezone, missed,
    next_fire_at, created_at, updated_at)
VALUES ('nightly', 'default', 'upgrade', 'null', '{{"tenant": "acme"}}',
    '{{"kind": "fixed", "base": 2.5, "factor": 2.0, "max_delay": 2.5, "jitter": 0.0}}',
    7, -4, '90 seconds', NULL, '0 3 * * *', 'UTC', 'latest',
    now() - interval '1 minute', now(), now())
"""

SCHEDULE_COLUMNS = [
    "schedule_id",
    "queue",
    "task_name",
    "params",
    "options",
    "cron",
    "timezone",
    "missed",
    "paused",
    "next_fire_at",
    "last_fired_at",
    "last_task_id",
    "created_at",
    "updated_at",
]


def _build_version_8(url: str, schema: str) -> None:
    """A schema as git cdc79a0 (schema version 8) left it, with a schedule due."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        _load_fixture(conn, schema, "schema_v8.sql.xz")
        conn.execute(sql.SQL(_VERSION_8_SCHEDULE).format(sql.Identifier(schema)))


def _columns(url: str, schema: str, table: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (schema, table),
        ).fetchall()
    return [row[0] for row in rows]


async def test_a_fresh_schema_stores_a_schedules_settings_as_options(
    client: dt.Durable, pg_url: str
) -> None:
    assert await trio.to_thread.run_sync(_columns, pg_url, client.schema, "schedules") == (
        SCHEDULE_COLUMNS
    )


async def test_a_version_8_schedule_upgrades_to_options_and_keeps_its_settings(
    pg_url: str, schema: str
) -> None:
    await trio.to_thread.run_sync(_build_version_8, pg_url, schema)
    async with unopened(pg_url, schema) as client:
        assert await client.store.schema_version() == 8
        await client.migrate()
        await client.store.check_schema()
        columns = await trio.to_thread.run_sync(_columns, pg_url, schema, "schedules")
        assert sorted(columns) == sorted(SCHEDULE_COLUMNS)
        info = await client.get_schedule("nightly")
        assert info.headers == {"tenant": "acme"}
        assert await fire_schedules(client) == 1
        task = await only_task_settings(client)
    assert (task["max_attempts"], task["priority"], task["retry"]) == (7, -4, FIXED_2_5)
    assert task["headers"]["tenant"] == "acme"
    assert task["headers"]["schedule_id"] == "nightly"
    assert (task["max_pending_delay"], task["max_duration"]) == (timedelta(seconds=90), None)
