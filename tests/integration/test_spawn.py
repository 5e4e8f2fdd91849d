"""Spawning: idempotency keys, spawns/emits that join a caller's transaction, and the rows a
spawn writes."""

from __future__ import annotations

import datetime
from typing import Any

import attrs
import psycopg
import pytest
import trio
from psycopg import sql
from psycopg.types.json import Jsonb

import durable_trio as dt
from durable_trio.testing import run_until_idle
from support import fetch, query


async def counts(client: dt.Durable) -> tuple[int, int]:
    (row,) = await query(
        client,
        "SELECT (SELECT count(*) FROM {schema}.tasks) AS tasks,"
        " (SELECT count(*) FROM {schema}.runs) AS runs",
    )
    return row["tasks"], row["runs"]


@attrs.frozen
class Greeting:
    name: str


@dt.task("greet")
async def greet(ctx: dt.TaskContext, params: Greeting) -> str:
    return await ctx.step("hello", lambda: f"hello {params.name}")


# -- idempotency ------------------------------------------------------------------------


async def test_same_idempotency_key_returns_the_same_task(client: dt.Durable) -> None:
    client.register(greet)
    options = dt.SpawnOptions(idempotency_key="order-42")
    first = await client.spawn(greet, Greeting("ada"), options=options)
    second = await client.spawn(greet, Greeting("bob"), options=options)
    assert first.created is True
    assert second.created is False
    assert second.task_id == first.task_id
    assert second.run_id == first.run_id
    assert second.attempt == 1
    assert await counts(client) == (1, 1)
    # The first spawn's params won; the second wrote nothing.
    info = await client.get_task(first.task_id)
    assert info.params == {"name": "ada"}

    await run_until_idle(client)
    assert await client.wait_result(greet, first.task_id, timeout=10) == "hello ada"
    # Still the same task after it finished.
    third = await client.spawn(greet, Greeting("cyd"), options=options)
    assert (third.task_id, third.created) == (first.task_id, False)
    assert await counts(client) == (1, 1)


async def test_idempotency_key_by_name_and_without_key(client: dt.Durable) -> None:
    options = dt.SpawnOptions(idempotency_key="k")
    a = await client.spawn_by_name("greet", {"name": "x"}, options=options)
    b = await client.spawn_by_name("greet", {"name": "y"}, options=options)
    assert (a.created, b.created, a.task_id) == (True, False, b.task_id)
    # Without a key every spawn is a new task.
    c = await client.spawn_by_name("greet", {"name": "x"})
    d = await client.spawn_by_name("greet", {"name": "x"})
    assert c.created
    assert d.created
    assert len({a.task_id, c.task_id, d.task_id}) == 3
    assert await counts(client) == (3, 3)


async def test_idempotency_key_is_per_queue(client: dt.Durable) -> None:
    a = await client.spawn_by_name("greet", {}, options=dt.SpawnOptions(idempotency_key="k"))
    b = await client.spawn_by_name(
        "greet", {}, options=dt.SpawnOptions(idempotency_key="k", queue="other")
    )
    assert a.created
    assert b.created
    assert a.task_id != b.task_id
    assert await counts(client) == (2, 2)


async def test_concurrent_spawns_with_one_key_create_one_task(client: dt.Durable) -> None:
    client.register(greet)
    options = dt.SpawnOptions(idempotency_key="race")
    results: list[dt.SpawnResult] = []

    async def spawn_one(i: int) -> None:
        results.append(await client.spawn(greet, Greeting(str(i)), options=options))

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(spawn_one, i)
    assert len(results) == 8
    assert len({r.task_id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert await counts(client) == (1, 1)


# -- transactional spawn ----------------------------------------------------------------


async def test_spawn_in_committed_transaction_is_visible_and_runnable(
    client: dt.Durable,
) -> None:
    client.register(greet)
    async with client.connection() as conn:
        await conn.execute(
            sql.SQL("CREATE TABLE {}.orders (id int PRIMARY KEY)").format(
                sql.Identifier(client.schema)
            )
        )
        await conn.execute(
            sql.SQL("INSERT INTO {}.orders VALUES (1)").format(sql.Identifier(client.schema))
        )
        spawned = await client.spawn(greet, Greeting("tx"), connection=conn)
        assert spawned.created
        # Invisible to everyone else until the commit.
        with pytest.raises(dt.TaskNotFound):
            await client.get_task(spawned.task_id)
        assert await counts(client) == (0, 0)
        await conn.commit()

    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.PENDING
    assert await run_until_idle(client) == 1
    assert await client.wait_result(greet, spawned.task_id, timeout=10) == "hello tx"
    assert await query(client, "SELECT id FROM {schema}.orders") == [{"id": 1}]


async def test_spawn_in_rolled_back_transaction_leaves_nothing(client: dt.Durable) -> None:
    client.register(greet)
    async with client.connection() as conn:
        spawned = await client.spawn(greet, Greeting("gone"), connection=conn)
        many = await client.spawn_by_name("greet", {"name": "gone too"}, connection=conn)
        await conn.rollback()
    assert await counts(client) == (0, 0)
    for task_id in (spawned.task_id, many.task_id):
        with pytest.raises(dt.TaskNotFound):
            await client.get_task(task_id)
    assert await run_until_idle(client) == 0


async def test_leaving_connection_block_without_commit_rolls_back(client: dt.Durable) -> None:
    client.register(greet)
    async with client.connection() as conn:
        await client.spawn(greet, Greeting("forgotten"), connection=conn)
    assert await counts(client) == (0, 0)


async def test_spawn_rolled_back_by_an_error_in_the_block(client: dt.Durable) -> None:
    client.register(greet)

    class BoomError(Exception):
        pass

    async def spawn_then_fail() -> None:
        async with client.connection() as conn:
            await client.spawn(greet, Greeting("boom"), connection=conn)
            raise BoomError

    with pytest.raises(BoomError):
        await spawn_then_fail()
    assert await counts(client) == (0, 0)


def _blocking_connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url)


async def test_spawn_with_a_blocking_psycopg_connection(client: dt.Durable, pg_url: str) -> None:
    client.register(greet)
    conn = await trio.to_thread.run_sync(_blocking_connect, pg_url)
    try:
        assert conn.autocommit is False
        committed = await client.spawn(greet, Greeting("sync"), connection=conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert await counts(client) == (0, 0)
        await trio.to_thread.run_sync(conn.commit)
        assert await counts(client) == (1, 1)

        rolled = await client.spawn(greet, Greeting("nope"), connection=conn)
        await client.emit_event("sync-event", {"n": 1}, connection=conn)
        await trio.to_thread.run_sync(conn.rollback)
    finally:
        await trio.to_thread.run_sync(conn.close)

    assert await counts(client) == (1, 1)
    with pytest.raises(dt.TaskNotFound):
        await client.get_task(rolled.task_id)
    assert await query(client, "SELECT * FROM {schema}.events") == []
    assert await run_until_idle(client) == 1
    assert await client.wait_result(greet, committed.task_id, timeout=10) == "hello sync"


async def test_emit_event_in_transaction(client: dt.Durable) -> None:
    async with client.connection() as conn:
        assert await client.emit_event("paid", {"order": 1}, connection=conn) == 0
        await conn.rollback()
    assert await query(client, "SELECT * FROM {schema}.events") == []

    async with client.connection() as conn:
        await client.emit_event("paid", {"order": 2}, connection=conn)
        assert await query(client, "SELECT * FROM {schema}.events") == []
        await conn.commit()
    rows = await query(client, "SELECT queue, event_name, payload FROM {schema}.events")
    assert rows == [{"queue": "default", "event_name": "paid", "payload": {"order": 2}}]


@dt.task("waiter")
async def waiter(ctx: dt.TaskContext, params: Any) -> Any:
    return await ctx.await_event("shipped")


async def test_rolled_back_emit_wakes_nobody(client: dt.Durable) -> None:
    client.register(waiter)
    spawned = await client.spawn(waiter, None)
    await run_until_idle(client)
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING

    async with client.connection() as conn:
        assert await client.emit_event("shipped", "box", connection=conn) == 1
        await conn.rollback()
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING
    assert len(await query(client, "SELECT * FROM {schema}.waits")) == 1
    assert await run_until_idle(client) == 0

    async with client.connection() as conn:
        assert await client.emit_event("shipped", "box", connection=conn) == 1
        await conn.commit()
    assert await run_until_idle(client) == 1
    assert await client.wait_result(waiter, spawned.task_id, timeout=10) == "box"


# A single spawn (statement spawn_one) and spawn_many (function spawn_tasks) write a task
# and its first run each: the rows must not differ but for ids and times.
WRITTEN = """
SELECT t.queue, t.task_name, t.params, t.headers, t.retry, t.max_attempts, t.priority,
    t.max_pending_delay, t.max_duration, t.idempotency_key, t.parent_task_id,
    t.root_task_id = t.task_id AS own_root, t.state, t.attempts, t.last_run_id = r.run_id
    AS linked, r.queue AS run_queue, r.task_name AS run_name, r.priority AS run_priority,
    r.attempt, r.state AS run_state, r.available_at, t.created_at,
    r.created_at = t.created_at AS same_time, r.worker_id, r.lease_expires_at,
    (SELECT array_agg(d.kind || ' ' || (d.due_at - t.created_at) ORDER BY d.kind)
     FROM @s.deadlines d WHERE d.task_id = t.task_id) AS deadlines
FROM @s.tasks t JOIN @s.runs r USING (task_id) WHERE t.task_id = %s
"""


def due(row: dict[str, Any], options: dt.SpawnOptions) -> Any:
    """When the first run is due (taken out of `row`): at start_at, else a delay after
    the task's creation."""
    available, created = row.pop("available_at"), row.pop("created_at")
    return available if options.start_at is not None else available - created


@pytest.mark.parametrize(
    "options",
    [
        dt.SpawnOptions(),
        dt.SpawnOptions(
            headers={"tenant": "t1"},
            max_attempts=3,
            priority=7,
            delay=30,
            cancellation=dt.CancellationPolicy(max_pending_delay=60, max_duration=120),
        ),
        dt.SpawnOptions(start_at=datetime.datetime(2031, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)),
    ],
)
async def test_a_single_spawn_writes_the_rows_spawn_many_writes(
    client: dt.Durable, options: dt.SpawnOptions
) -> None:
    client.register(greet)
    single = await client.spawn(greet, Greeting("x"), options=options)
    (many,) = await client.spawn_many(greet, [Greeting("x")], options=options)
    (one,) = await fetch(client, WRITTEN, single.task_id)
    (other,) = await fetch(client, WRITTEN, many.task_id)
    assert due(one, options) == due(other, options)
    assert one == other
    assert (one["own_root"], one["linked"], one["same_time"]) == (True, True, True)


async def test_spawn_many_is_all_or_nothing(client: dt.Durable) -> None:
    client.register(greet)
    results = await client.spawn_many(greet, [Greeting("a"), Greeting("b"), Greeting("c")])
    assert [r.created for r in results] == [True, True, True]
    assert len({r.task_id for r in results}) == 3
    assert await counts(client) == (3, 3)
    with pytest.raises(dt.SerializationError):
        await client.spawn_many(greet, [Greeting("d"), {"bogus": 1}])
    assert await counts(client) == (3, 3)
    await run_until_idle(client)
    assert sorted([await client.wait_result(greet, r.task_id, timeout=10) for r in results]) == [
        "hello a",
        "hello b",
        "hello c",
    ]


async def test_spawn_many_stores_every_params_text_exactly(client: dt.Durable) -> None:
    """Characters that mean something in an array literal or in JSON text."""
    client.register(greet)
    names = ['say "hi"', "back\\slash\\", "{a,b}", "NULL", "", " , ", "é ✓ 🦀", '\\"{}']
    results = await client.spawn_many(greet, [Greeting(n) for n in names])
    stored = [(await client.get_task(r.task_id)).params for r in results]
    assert stored == [{"name": n} for n in names]
    assert await client.spawn_many(greet, []) == []


@dt.task("keyed", options=dt.SpawnOptions(idempotency_key="once"))
async def keyed(ctx: dt.TaskContext, p: None) -> None:
    return None


async def test_spawn_many_refuses_an_idempotency_key_from_the_task_defaults(
    client: dt.Durable,
) -> None:
    client.register(keyed)
    with pytest.raises(dt.InvalidInput, match="idempotency_key"):
        await client.spawn_many(keyed, [None, None])
    assert await counts(client) == (0, 0)


async def test_spawn_many_refuses_a_shared_idempotency_key(client: dt.Durable) -> None:
    # One key for the whole batch would keep the first task and drop the rest.
    client.register(greet)
    options = dt.SpawnOptions(idempotency_key="batch")
    with pytest.raises(dt.InvalidInput, match=r"idempotency_key .* one by one"):
        await client.spawn_many(greet, [Greeting("a"), Greeting("b")], options=options)
    assert await counts(client) == (0, 0)
    single = await client.spawn(greet, Greeting("d"), options=options)
    again = await client.spawn(greet, Greeting("e"), options=options)
    assert (again.task_id, again.created) == (single.task_id, False)
    assert await counts(client) == (1, 1)


async def test_keys_of_schedule_slots_are_refused_to_client_spawns(client: dt.Durable) -> None:
    """A client's task under a slot's key would stand in for that slot, which then spawns
    nothing: such keys are the schedules' own (the SQL spawn they fire through takes them)."""
    client.register(greet)
    key = "schedule:hourly:2030-01-01T00:00:00+00:00"
    with pytest.raises(dt.InvalidInput, match="reserved for the tasks of schedule slots"):
        await client.spawn(greet, Greeting("a"), options=dt.SpawnOptions(idempotency_key=key))
    with pytest.raises(dt.InvalidInput, match=r"idempotency_keys\[1\] .* reserved"):
        await client.spawn_many(greet, [Greeting("a"), Greeting("b")], idempotency_keys=["a", key])
    assert await counts(client) == (0, 0)
    [row] = await fetch(
        client,
        "SELECT task_id FROM @s.spawn('default', 'greet', 'null', %s::jsonb)",
        Jsonb({"idempotency_key": key}),
    )
    assert row["task_id"] is not None
    assert await counts(client) == (1, 1)


async def test_spawn_many_keys_with_array_literal_characters(client: dt.Durable) -> None:
    client.register(greet)
    keys = ['say "hi"', "back\\slash\\", "{a,b}", "NULL", " , ", "é ✓ 🦀", None]
    results = await client.spawn_many(
        greet, [Greeting(str(i)) for i in range(7)], idempotency_keys=keys
    )
    assert all(r.created for r in results)
    for key, spawned in zip(keys[:-1], results, strict=False):
        again = await client.spawn(
            greet, Greeting("x"), options=dt.SpawnOptions(idempotency_key=key)
        )
        assert (again.task_id, again.created) == (spawned.task_id, False)
    (row,) = await query(
        client, "SELECT count(*) AS n FROM {schema}.tasks WHERE idempotency_key IS NULL"
    )
    assert row["n"] == 1
    assert await counts(client) == (7, 7)


async def test_concurrent_spawn_many_with_shared_keys_create_each_task_once(
    client: dt.Durable,
) -> None:
    client.register(greet)
    results: list[list[dt.SpawnResult[Any]]] = []

    async def spawn_batch(i: int) -> None:
        keys = [f"k{j}" for j in range(10)]
        params = [Greeting(f"{i}-{j}") for j in range(10)]
        results.append(await client.spawn_many(greet, params, idempotency_keys=keys))

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(spawn_batch, i)
    assert len(results) == 6
    for j in range(10):
        assert len({batch[j].task_id for batch in results}) == 1
        assert sum(batch[j].created for batch in results) == 1
    assert await counts(client) == (10, 10)


async def test_a_spawn_sees_options_headers_changed_in_place_and_new_registrations(
    client: dt.Durable,
) -> None:
    # A client reuses what it checked for the same task and options: not past a change.
    options = dt.SpawnOptions(headers={"tenant": "a"})
    first = await client.spawn(greet, Greeting("a"), options=options)
    options.headers["tenant"] = "b"
    second = await client.spawn(greet, Greeting("b"), options=options)
    assert (await client.get_task(first.task_id)).headers == {"tenant": "a"}
    assert (await client.get_task(second.task_id)).headers == {"tenant": "b"}
    name = "greet"
    await client.spawn_by_name(name, {"nom": 1})  # not registered: plain JSON goes
    client.register(greet)
    with pytest.raises(dt.SerializationError):
        await client.spawn_by_name(name, {"nom": 1})
    assert await counts(client) == (3, 3)
