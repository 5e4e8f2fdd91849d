"""The SQL API (docs/sql.md): spawn and emit_event called from plain psycopg, as any
client that speaks SQL would, with the same checks and defaults as the Python client."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
import trio
from psycopg import sql

import durable_trio as dt
from durable_trio.testing import run_until_idle


@dt.task("hello")
async def hello(ctx: dt.TaskContext, params: Any) -> str:
    return await ctx.step("greet", lambda: f"hello {params['name']}")


@dt.task("waiter")
async def waiter(ctx: dt.TaskContext, params: None) -> Any:
    return await ctx.await_event("go")


def _call(url: str, schema: str, text: str, *args: Any) -> list[tuple[Any, ...]]:
    """`text` with ``@s`` for the schema, run in a transaction that commits."""
    query = text.replace("@s", sql.Identifier(schema).as_string(None))
    with psycopg.connect(url) as conn:
        return conn.execute(query.encode(), args).fetchall()


async def call(client: dt.Durable, text: str, *args: Any) -> list[tuple[Any, ...]]:
    return await trio.to_thread.run_sync(_call, client.url, client.schema, text, *args)


async def task_rows(client: dt.Durable) -> list[tuple[Any, ...]]:
    return await call(
        client,
        "SELECT queue, task_name, params, headers, retry, max_attempts, priority,"
        " max_pending_delay, max_duration, idempotency_key FROM @s.tasks ORDER BY task_id",
    )


async def test_spawn_from_sql_runs_on_a_python_worker(client: dt.Durable) -> None:
    client.register(hello)
    [(task_id, run_id, attempt)] = await call(
        client, "SELECT * FROM @s.spawn('default', 'hello', %s)", json.dumps({"name": "sql"})
    )
    assert isinstance(task_id, UUID)
    assert isinstance(run_id, UUID)
    assert (task_id.version, run_id.version, attempt) == (7, 7, 1)
    await run_until_idle(client)
    assert await client.wait_result(hello, task_id, timeout=10) == "hello sql"


async def test_ids_made_by_the_database_sort_by_creation(client: dt.Durable) -> None:
    ids = [
        (await call(client, "SELECT task_id FROM @s.spawn('default', 'hello')"))[0][0]
        for _ in range(5)
    ]
    ms = [int.from_bytes(i.bytes[:6], "big") for i in ids]
    assert ms == sorted(ms)
    assert all(i.version == 7 and i.variant == "specified in RFC 4122" for i in ids)


async def test_defaults_and_options_are_stored_as_the_python_client_stores_them(
    client: dt.Durable,
) -> None:
    await client.spawn_by_name("hello", {"name": "py"})
    await call(client, "SELECT * FROM @s.spawn('default', 'hello', '{\"name\": \"py\"}')")
    options = dt.SpawnOptions(
        max_attempts=3,
        retry=dt.RetryStrategy.fixed(7),
        headers={"tenant": "acme"},
        priority=4,
        delay=30,
        idempotency_key="k1",
        cancellation=dt.CancellationPolicy(max_pending_delay=60, max_duration=600),
        queue="other",
    )
    await client.spawn_by_name("hello", None, options=options)
    await call(
        client,
        "SELECT * FROM @s.spawn('other', 'hello', 'null', %s)",
        json.dumps(
            {
                "max_attempts": 3,
                "retry": {"kind": "fixed", "base": 7},
                "headers": {"tenant": "acme"},
                "priority": 4,
                "delay": 30,
                "idempotency_key": "k2",
                "cancellation": {"max_pending_delay": 60, "max_duration": 600},
            }
        ),
    )
    py_default, sql_default, py_options, sql_options = await task_rows(client)
    assert py_default == sql_default
    assert py_options[:-1] == sql_options[:-1]
    assert (py_options[-1], sql_options[-1]) == ("k1", "k2")
    [(task_id, _, _)] = await call(
        client,
        "SELECT * FROM @s.spawn('default', 'hello', 'null', %s)",
        '{"retry": {"kind": "exponential"}}',
    )
    exponential = await call(client, "SELECT retry FROM @s.tasks WHERE task_id = %s", task_id)
    assert exponential == [(dt.RetryStrategy.exponential().to_json(),)]


async def test_start_at_and_given_ids(client: dt.Durable) -> None:
    start = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    task_id, run_id = UUID(int=1), UUID(int=2)
    options = {"start_at": start.isoformat(), "task_id": str(task_id), "run_id": str(run_id)}
    [row] = await call(
        client, "SELECT * FROM @s.spawn('default', 'hello', 'null', %s)", json.dumps(options)
    )
    assert row == (task_id, run_id, 1)
    [(available,)] = await call(client, "SELECT available_at FROM @s.runs")
    assert available == start


async def test_a_repeated_idempotency_key_returns_the_first_task(client: dt.Durable) -> None:
    text = "SELECT * FROM @s.spawn('default', 'hello', %s, '{\"idempotency_key\": \"once\"}')"
    first = await call(client, text, '{"name": "a"}')
    again = await call(client, text, '{"name": "b"}')
    assert first == again
    assert len(await task_rows(client)) == 1


async def test_spawn_joins_the_callers_transaction(client: dt.Durable) -> None:
    def spawn_then_roll_back() -> None:
        with psycopg.connect(client.url) as conn:
            conn.execute(
                sql.SQL("SELECT * FROM {}.spawn('default', 'hello')").format(
                    sql.Identifier(client.schema)
                )
            )
            conn.rollback()

    await trio.to_thread.run_sync(spawn_then_roll_back)
    assert await task_rows(client) == []


async def test_emit_event_from_sql_wakes_a_waiting_task(client: dt.Durable) -> None:
    client.register(waiter)
    spawned = await client.spawn(waiter, None)
    await run_until_idle(client)
    [(woken,)] = await call(
        client, "SELECT @s.emit_event('default', 'go', %s)", json.dumps({"ok": True})
    )
    assert woken == 1
    await run_until_idle(client)
    assert await client.wait_result(waiter, spawned.task_id, timeout=10) == {"ok": True}


BAD_SPAWNS = [
    ("'Bad-Queue', 'hello', 'null', '{}'", "queue name 'Bad-Queue' is invalid"),
    ("'default', '', 'null', '{}'", "task name must be 1 to 200 characters"),
    ("'default', '$x', 'null', '{}'", "reserved for durable_trio"),
    ("'default', repeat('n', 201), 'null', '{}'", "task name must be 1 to 200"),
    ("'default', e'a\\nb', 'null', '{}'", "contains control characters"),
    ("'default', 'hello', 'null', '[]'", "options must be a JSON object"),
    ("'default', 'hello', 'null', '{\"colour\": 1}'", "unknown keys: colour"),
    ("'default', 'hello', 'null', '{\"max_attempts\": 0}'", "max_attempts must be an integer"),
    ("'default', 'hello', 'null', '{\"max_attempts\": 1.5}'", "max_attempts must be an"),
    ("'default', 'hello', 'null', '{\"priority\": 2000000}'", "priority must be an integer"),
    ("'default', 'hello', 'null', '{\"delay\": -1}'", "delay must be zero or more"),
    ("'default', 'hello', 'null', '{\"delay\": 1e13}'", "at most 3155760000 seconds"),
    ("'default', 'hello', 'null', '{\"delay\": \"soon\"}'", "delay must be a number"),
    (
        "'default', 'hello', 'null', '{\"delay\": 1, \"start_at\": \"2030-01-01T00:00:00Z\"}'",
        "either delay or start_at",
    ),
    ("'default', 'hello', 'null', '{\"start_at\": \"2030-01-01T00:00\"}'", "UTC offset"),
    (
        "'default', 'hello', 'null', '{\"start_at\": \"200000-01-01T00:00:00Z\"}'",
        "start_at must be at most 3155760000 seconds from now",
    ),
    ("'default', 'hello', 'null', '{\"retry\": {\"kind\": \"sometimes\"}}'", "retry kind"),
    ("'default', 'hello', 'null', '{\"retry\": {\"kind\": \"fixed\", \"base\": 1e13}}'", "at most"),
    ("'default', 'hello', 'null', '{\"retry\": {\"kind\": \"fixed\", \"wait\": 1}}'", "retry must"),
    (
        "'default', 'hello', 'null', '{\"retry\": {\"kind\": \"exponential\", \"factor\": 0.5}}'",
        "factor must be between 1 and 100",
    ),
    (
        "'default', 'hello', 'null', '{\"retry\": {\"kind\": \"exponential\", \"jitter\": 2}}'",
        "jitter must be between 0 and 1",
    ),
    ("'default', 'hello', 'null', '{\"headers\": []}'", "headers must be a JSON object"),
    ("'default', 'hello', 'null', '{\"headers\": {\"\": 1}}'", "header name"),
    ("'default', 'hello', 'null', '{\"headers\": {\"$trace\": 1}}'", "reserved"),
    ("'default', 'hello', 'null', '{\"idempotency_key\": \"\"}'", "idempotency_key must be"),
    ("'default', 'hello', 'null', '{\"idempotency_key\": 5}'", "idempotency_key must be"),
    (
        "'default', 'hello', 'null', '{\"cancellation\": {\"max_duration\": 0}}'",
        "max_duration must be more than zero",
    ),
    ("'default', 'hello', 'null', '{\"cancellation\": {\"ttl\": 5}}'", "cancellation must be"),
    ("'default', 'hello', 'null', '{\"task_id\": \"nope\"}'", "task_id must be a UUID"),
    # Numbers beyond a double, read exactly rather than cast (which overflowed or
    # underflowed with SQLSTATE 22003), and timestamps the cast rejects (22008, 22009).
    ("'default', 'hello', 'null', '{\"delay\": 1e400}'", "delay must be zero or more and at"),
    (
        "'default', 'hello', 'null', '{\"delay\": 1e-400}'",
        "delay is too small to be told from zero, got 1.000000e-400",
    ),
    (
        "'default', 'hello', 'null', '{\"cancellation\": {\"max_duration\": 1e400}}'",
        "max_duration must be more than zero and at most",
    ),
    (
        "'default', 'hello', 'null', '{\"cancellation\": {\"max_pending_delay\": 1e-400}}'",
        "max_pending_delay must be at least one microsecond, got 1.000000e-400",
    ),
    (
        "'default', 'hello', 'null', '{\"cancellation\": {\"max_pending_delay\": 1e-7}}'",
        "max_pending_delay must be at least one microsecond",
    ),
    (
        "'default', 'hello', 'null', '{\"retry\": {\"kind\": \"exponential\", \"base\": 1e400}}'",
        "retry base delay must be zero or more",
    ),
    (
        "'default', 'hello', 'null',"
        ' \'{"retry": {"kind": "exponential", "max_delay": 1e400}}\'',
        "retry max_delay must be zero or more",
    ),
    (
        "'default', 'hello', 'null', '{\"retry\": {\"kind\": \"exponential\", \"factor\": 1e400}}'",
        "factor must be between 1 and 100",
    ),
    (
        '\'default\', \'hello\', \'null\', \'{"retry": {"kind": "exponential", "factor": "2"}}\'',
        "factor must be between 1 and 100",
    ),
    (
        "'default', 'hello', 'null',"
        ' \'{"retry": {"kind": "exponential", "jitter": 1e-400}}\'',
        "retry jitter is too small",
    ),
    (
        "'default', 'hello', 'null', '{\"start_at\": \"2030-13-01T00:00:00Z\"}'",
        "start_at must be a valid ISO 8601 timestamp",
    ),
    (
        "'default', 'hello', 'null', '{\"start_at\": \"2030-01-01T00:00:00+99:00\"}'",
        "start_at must be a valid ISO 8601 timestamp",
    ),
    (
        "'default', 'hello', 'null', '{\"start_at\": \"sometime+00:00\"}'",
        "start_at must be a valid ISO 8601 timestamp",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_SPAWNS)
async def test_bad_spawns_are_refused_and_write_nothing(
    client: dt.Durable, args: str, message: str
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message) as refused:
        await call(client, f"SELECT * FROM @s.spawn({args})")
    said = str(refused.value)
    assert said.startswith("durable_trio: ")
    assert len(said.splitlines()[0]) < 300, said  # 1e400's 401 digits are not all shown
    assert await task_rows(client) == []
    [(runs,)] = await call(client, "SELECT count(*) FROM @s.runs")
    assert runs == 0


async def test_a_taken_task_or_run_id_is_refused_and_writes_nothing(client: dt.Durable) -> None:
    text = "SELECT task_id FROM @s.spawn('default', 'hello', 'null', %s)"
    task_id, run_id = UUID(int=1), UUID(int=2)
    await call(client, text, json.dumps({"task_id": str(task_id), "run_id": str(run_id)}))
    for given, message in [
        ({"task_id": str(task_id)}, f"durable_trio: task_id {task_id} is taken"),
        ({"run_id": str(run_id)}, f"durable_trio: run_id {run_id} is taken"),
    ]:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
            await call(client, text, json.dumps(given))
    assert len(await task_rows(client)) == 1
    [(runs,)] = await call(client, "SELECT count(*) FROM @s.runs")
    assert runs == 1
    # With an idempotency key, a repeat returns the first task, as before.
    keyed = json.dumps({"task_id": str(UUID(int=3)), "idempotency_key": "k"})
    assert await call(client, text, keyed) == await call(client, text, keyed)


async def test_small_and_exact_durations_are_kept(client: dt.Durable) -> None:
    """Under a microsecond, a delay is zero (as in Python); read exactly, not rounded."""
    options = {"delay": 1e-7, "cancellation": {"max_duration": 0.000001}}
    await call(
        client, "SELECT * FROM @s.spawn('default', 'hello', 'null', %s)", json.dumps(options)
    )
    [(available, created, max_duration)] = await call(
        client,
        "SELECT r.available_at, t.created_at, t.max_duration FROM @s.runs r"
        " JOIN @s.tasks t USING (task_id)",
    )
    assert (available - created, max_duration) == (timedelta(0), timedelta(microseconds=1))


async def test_params_larger_than_the_limit_are_refused(client: dt.Durable) -> None:
    big = json.dumps("x" * (10 * 1024 * 1024))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="larger than 10 MiB"):
        await call(client, "SELECT * FROM @s.spawn('default', 'hello', %s)", big)
    assert await task_rows(client) == []


async def test_spawned_by_sql_later_than_delay(client: dt.Durable) -> None:
    await call(client, "SELECT * FROM @s.spawn('default', 'hello', 'null', '{\"delay\": 60}')")
    [(available, created)] = await call(client, "SELECT available_at, created_at FROM @s.runs")
    assert available - created == timedelta(seconds=60)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("'Nope', 'go', 'null'", "queue name 'Nope' is invalid"),
        ("'default', '', 'null'", "event name must be 1 to 200"),
        ("'default', '$task:0191', '{}'", "reserved for durable_trio"),
        ("'default', e'a\\tb', 'null'", "contains control characters"),
    ],
)
async def test_bad_emits_are_refused_and_write_nothing(
    client: dt.Durable, args: str, message: str
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        await call(client, f"SELECT @s.emit_event({args})")
    assert await call(client, "SELECT count(*) FROM @s.events") == [(0,)]


async def test_emit_with_null_payload_stores_json_null(client: dt.Durable) -> None:
    assert await call(client, "SELECT @s.emit_event('default', 'go', NULL)") == [(0,)]
    assert await call(client, "SELECT payload FROM @s.events") == [(None,)]
    [(is_json_null,)] = await call(client, "SELECT payload = 'null'::jsonb FROM @s.events")
    assert is_json_null
