"""Migrations: idempotent, safe when processes race, and producing exactly the schema we
expect (any new table, index or function must be added to the lists below on purpose)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import trio
from psycopg import sql

import durable_trio as dt
from durable_trio._core.ids import uuid7
from durable_trio._store import migrations
from support import fetch

EXPECTED_TABLES = {
    "checkpoints",
    "clock",
    "deadlines",
    "events",
    "migrations",
    "runs",
    "tasks",
    "waits",
}

# (table, index) including primary keys and unique constraints.
EXPECTED_INDEXES = {
    ("checkpoints", "checkpoints_pkey"),
    ("clock", "clock_pkey"),
    ("deadlines", "deadlines_due"),
    ("deadlines", "deadlines_pkey"),
    ("events", "events_pkey"),
    ("migrations", "migrations_pkey"),
    ("runs", "runs_claim"),
    ("runs", "runs_due"),
    ("runs", "runs_leased"),
    ("runs", "runs_pkey"),
    ("runs", "runs_task_id_attempt_key"),
    ("tasks", "tasks_idempotency"),
    ("tasks", "tasks_parent"),
    ("tasks", "tasks_pkey"),
    ("waits", "waits_event"),
    ("waits", "waits_pkey"),
}

EXPECTED_FUNCTIONS = {
    "announce_end",
    "await_event",
    "cancel_task",
    "claim_runs",
    "clock_now",
    "deadline_void",
    "emit_event",
    "enforce_deadline",
    "enforce_deadlines",
    "fail_run",
    "heartbeat",
    "lock_owned_run",
    "note_deadline",
    "notify_queue",
    "record_one",
    "record_runs",
    "release_run",
    "spawn_task",
    "spawn_tasks",
    "suspend_run",
}

# Indexes that must stay partial (finished rows out of the claim path).
PARTIAL_INDEXES = {"runs_claim", "runs_due", "runs_leased", "tasks_idempotency", "tasks_parent"}


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


async def test_migrate_is_idempotent(client: dt.Durable, pg_url: str) -> None:
    before = await trio.to_thread.run_sync(_catalog, pg_url, client.schema)
    assert await client.migrate() == []
    assert await client.migrate() == []
    assert await client.store.schema_version() == max(v for v, _, _ in migrations())
    assert await trio.to_thread.run_sync(_catalog, pg_url, client.schema) == before


async def test_first_migrate_applies_every_migration(pg_url: str, schema: str) -> None:
    assert not await trio.to_thread.run_sync(_schema_exists, pg_url, schema)
    async with dt.Durable.connect(pg_url, schema=schema, migrate=False) as client:
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
        async with dt.Durable.connect(pg_url, schema=schema, migrate=False) as client:
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

    async with dt.Durable.connect(pg_url, schema=schema, migrate=False) as client:
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
    latest = max(v for v, _, _ in migrations())
    await fetch(client, "DELETE FROM @s.migrations WHERE version = %s", latest)
    with pytest.raises(dt.ConfigurationError, match=f"version {latest - 1}.*version {latest}"):
        async with client.worker():
            pass  # pragma: no cover
