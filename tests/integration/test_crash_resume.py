"""Crashes and zombies: a dead worker's run resumes from its checkpoints elsewhere, and a
worker that lost its lease can write nothing more (invariants 1, 2 and 3)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
import trio
from psycopg import sql

import durable_trio as dt
from durable_trio._core.ids import uuid7
from durable_trio.testing import advance_clock, database_now, reap_expired, run_until_idle
from support import query

CLAIM_TIMEOUT = 30.0

# Shared with the task bodies; reset for every test.
CALLS: dict[str, int] = {}
GATES: dict[str, trio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    GATES.clear()


def bump(key: str) -> int:
    CALLS[key] = CALLS.get(key, 0) + 1
    return CALLS[key]


# -- a worker killed between step 2 and step 3 -----------------------------------------


def step_one() -> int:
    bump("one")
    return 1


async def step_two(x: int) -> int:
    bump("two")
    await trio.lowlevel.checkpoint()
    return x + 1


async def step_three(x: int) -> int:
    bump("three started")
    if "three entered" in GATES and not GATES["three entered"].is_set():
        # First attempt: tell the test we are inside step 3, then hang until killed.
        GATES["three entered"].set()
        await trio.sleep_forever()
    bump("three done")
    return x + 1


@dt.task("three_steps", options=dt.SpawnOptions(retry=dt.RetryStrategy.none()))
async def three_steps(ctx: dt.TaskContext, params: Any) -> dict[str, int]:
    a = await ctx.step("one", step_one)
    b = await ctx.step("two", step_two, a)
    c = await ctx.step("three", step_three, b)
    return {"a": a, "b": b, "c": c, "attempt": ctx.attempt}


async def test_crash_between_steps_resumes_from_checkpoints(client: dt.Durable) -> None:
    client.register(three_steps)
    GATES["three entered"] = trio.Event()
    spawned = await client.spawn(three_steps, {})

    worker = client.new_worker(
        dt.WorkerOptions(claim_timeout=CLAIM_TIMEOUT, poll_interval=0.05, worker_id="doomed")
    )
    worker.hand_back_on_cancel = False  # plays a process that died: nothing handed back
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await GATES["three entered"].wait()
            # The crash: no graceful shutdown, no release, nothing more written.
            nursery.cancel_scope.cancel()

    run_rows = await query(
        client, "SELECT * FROM {schema}.runs WHERE task_id = %s", spawned.task_id
    )
    assert len(run_rows) == 1
    assert run_rows[0]["state"] == "running"
    assert run_rows[0]["worker_id"] == "doomed"
    checkpoints = await query(
        client,
        "SELECT name, value, run_id FROM {schema}.checkpoints WHERE task_id = %s ORDER BY name",
        spawned.task_id,
    )
    assert [(c["name"], c["value"]) for c in checkpoints] == [("one", 1), ("two", 2)]
    first_run = run_rows[0]["run_id"]

    # The lease is still live: nobody may take the run over yet.
    assert await run_until_idle(client) == 0
    await advance_clock(client, CLAIM_TIMEOUT + 1)
    assert await run_until_idle(client) == 1

    result = await client.wait_result(three_steps, spawned.task_id, timeout=10)
    assert result == {"a": 1, "b": 2, "c": 3, "attempt": 2}
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.COMPLETED
    assert info.attempts == 2
    # Each step body ran to completion exactly once; step 3 was entered twice because
    # the first attempt died inside it before its checkpoint.
    assert CALLS == {"one": 1, "two": 1, "three started": 2, "three done": 1}

    runs = await query(
        client,
        "SELECT attempt, state, error FROM {schema}.runs WHERE task_id = %s ORDER BY attempt",
        spawned.task_id,
    )
    assert [(r["attempt"], r["state"]) for r in runs] == [(1, "failed"), (2, "completed")]
    assert runs[0]["error"]["type"] == "LeaseExpired"
    checkpoints = await query(
        client,
        "SELECT name, run_id FROM {schema}.checkpoints WHERE task_id = %s ORDER BY name",
        spawned.task_id,
    )
    assert [c["name"] for c in checkpoints] == ["one", "three", "two"]
    by_name = {c["name"]: c["run_id"] for c in checkpoints}
    assert by_name["one"] == by_name["two"] == first_run
    assert by_name["three"] != first_run


async def test_crash_of_last_attempt_fails_the_task(client: dt.Durable) -> None:
    client.register(three_steps)
    GATES["three entered"] = trio.Event()
    spawned = await client.spawn(three_steps, {}, options=dt.SpawnOptions(max_attempts=1))
    worker = client.new_worker(dt.WorkerOptions(claim_timeout=CLAIM_TIMEOUT, poll_interval=0.05))
    worker.hand_back_on_cancel = False  # plays a process that died: nothing handed back
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await GATES["three entered"].wait()
            nursery.cancel_scope.cancel()
    await advance_clock(client, CLAIM_TIMEOUT + 1)
    await reap_expired(client)
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.FAILED
    assert info.attempts == 1
    assert info.error is not None
    assert info.error["type"] == "LeaseExpired"
    with pytest.raises(dt.TaskFailed):
        await client.wait_result(three_steps, spawned.task_id, timeout=10)


# -- zombies: a worker whose lease expired ---------------------------------------------


@dt.task("plain", options=dt.SpawnOptions(retry=dt.RetryStrategy.none()))
async def plain(ctx: dt.TaskContext, params: Any) -> int:
    return 1


async def test_zombie_writes_are_fenced(client: dt.Durable) -> None:
    client.register(plain)
    store = client.store
    spawned = await client.spawn(plain, {})
    claimed = await store.claim(client.queue, "A", ["plain"], 10, CLAIM_TIMEOUT)
    assert [r.run_id for r in claimed] == [spawned.run_id]
    # A writes a checkpoint while it owns the run: allowed.
    assert await store.set_checkpoint(spawned.run_id, "A", "early", "1")

    await advance_clock(client, CLAIM_TIMEOUT + 1)
    # A second worker cannot claim a running run, even an expired one: the reaper must
    # fail it first (costing an attempt), then the retry is claimable.
    assert await store.claim(client.queue, "B", ["plain"], 10, CLAIM_TIMEOUT) == []
    await reap_expired(client)
    claimed_b = await store.claim(client.queue, "B", ["plain"], 10, CLAIM_TIMEOUT)
    assert len(claimed_b) == 1
    b_run: UUID = claimed_b[0].run_id
    assert b_run != spawned.run_id
    assert claimed_b[0].attempt == 2
    assert json.loads(claimed_b[0].checkpoints) == {"early": 1}

    async def snapshot() -> tuple[Any, ...]:
        task = await query(
            client, "SELECT * FROM {schema}.tasks WHERE task_id = %s", spawned.task_id
        )
        runs = await query(
            client,
            "SELECT * FROM {schema}.runs WHERE task_id = %s ORDER BY attempt",
            spawned.task_id,
        )
        cps = await query(
            client,
            "SELECT * FROM {schema}.checkpoints WHERE task_id = %s ORDER BY name",
            spawned.task_id,
        )
        return task, runs, cps

    before = await snapshot()
    old = spawned.run_id
    # A's late writes against its old run, and against B's run with A's name.
    for run_id in (old, b_run):
        assert await store.set_checkpoint(run_id, "A", "late", "2") is False
        assert await store.complete(run_id, "A", json.dumps(99)) is False
        assert (
            await store.fail(
                run_id, "A", json.dumps({"type": "X"}), retry=True, delay=0, new_run_id=uuid7()
            )
            is None
        )
        assert (
            await store.suspend(run_id, "A", await database_now(client) + timedelta(hours=1))
            is False
        )
        assert await store.release(run_id, "A") is False
        assert await store.heartbeat("A", [run_id], CLAIM_TIMEOUT) == {}
        outcome, payload = await store.await_event(
            run_id, "A", client.queue, "ev", "$event:ev", None
        )
        assert (outcome, payload) == ("fenced", None)
    # The reaper does not touch a live lease either.
    assert (
        await store.fail(
            b_run, None, json.dumps({"type": "X"}), retry=True, delay=0, new_run_id=uuid7()
        )
        is None
    )
    with pytest.raises(dt.LeaseLost):
        async with store.owned_transaction(old, "A"):
            pytest.fail("a zombie must not get a transaction")
    assert await snapshot() == before

    task, runs, cps = before
    assert task[0]["state"] == "running"
    assert task[0]["attempts"] == 2
    assert task[0]["result"] is None
    assert [(r["attempt"], r["state"], r["worker_id"]) for r in runs] == [
        (1, "failed", "A"),
        (2, "running", "B"),
    ]
    assert [c["name"] for c in cps] == ["early"]

    # B, the live owner, can still finish the task.
    assert await store.set_checkpoint(b_run, "B", "late", "3")
    assert await store.complete(b_run, "B", json.dumps(7))
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.COMPLETED
    assert info.result == 7


async def test_expired_lease_is_fenced_even_before_reaping(client: dt.Durable) -> None:
    client.register(plain)
    store = client.store
    spawned = await client.spawn(plain, {})
    await store.claim(client.queue, "A", ["plain"], 1, CLAIM_TIMEOUT)
    await advance_clock(client, CLAIM_TIMEOUT + 0.5)
    # No one has taken over yet, but the lease is gone: A still may not write.
    assert await store.set_checkpoint(spawned.run_id, "A", "late", "1") is False
    assert await store.complete(spawned.run_id, "A", "1") is False
    assert await store.heartbeat("A", [spawned.run_id], CLAIM_TIMEOUT) == {}
    cps = await query(client, "SELECT * FROM {schema}.checkpoints")
    assert cps == []
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.RUNNING
    assert info.result is None


# -- a step in progress when the real worker loses its lease ---------------------------


async def first_step() -> str:
    bump("first")
    return "done"


async def slow_step() -> str:
    bump("slow started")
    try:
        GATES["slow entered"].set()
        await trio.sleep_forever()
    except trio.Cancelled:
        bump("slow cancelled")
        GATES["slow cancelled"].set()
        raise
    bump("slow finished")  # never reached
    return "slow"


@dt.task("loses_lease", options=dt.SpawnOptions(max_attempts=1, retry=dt.RetryStrategy.none()))
async def loses_lease(ctx: dt.TaskContext, params: Any) -> str:
    await ctx.step("first", first_step)
    await ctx.step("slow", slow_step)
    bump("after slow")
    await ctx.step("after", lambda: "after")
    return "finished"


async def test_step_in_progress_is_cancelled_when_lease_is_lost(client: dt.Durable) -> None:
    client.register(loses_lease)
    GATES["slow entered"] = trio.Event()
    GATES["slow cancelled"] = trio.Event()
    spawned = await client.spawn(loses_lease, {})
    # A short lease so heartbeats come often (every claim_timeout / 3 of real time).
    worker = client.new_worker(
        dt.WorkerOptions(claim_timeout=3, poll_interval=0.1, worker_id="zombie")
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await GATES["slow entered"].wait()
            claimed = await query(
                client,
                "SELECT run_id, state FROM {schema}.runs WHERE task_id = %s",
                spawned.task_id,
            )
            assert [r["state"] for r in claimed] == ["running"]
            # The database clock jumps past the lease: the next heartbeat does not
            # renew it, and the worker must cancel the step through its cancel scope.
            await advance_clock(client, 60)
            with pytest.raises(dt.TaskFailed) as caught:
                await client.wait_result(loses_lease, spawned.task_id, timeout=10)
            await GATES["slow cancelled"].wait()
            worker.shutdown()

    assert caught.value.error["type"] == "LeaseExpired"
    assert CALLS == {"first": 1, "slow started": 1, "slow cancelled": 1}
    cps = await query(
        client, "SELECT name FROM {schema}.checkpoints WHERE task_id = %s", spawned.task_id
    )
    assert [c["name"] for c in cps] == ["first"]
    runs = await query(
        client, "SELECT state, error FROM {schema}.runs WHERE task_id = %s", spawned.task_id
    )
    assert [r["state"] for r in runs] == ["failed"]
    # The only failure written is the reaper's, not one from the zombie worker.
    assert runs[0]["error"]["type"] == "LeaseExpired"
    info = await client.get_task(spawned.task_id)
    assert info.result is None


# -- exactly-once database side effects across a crash --------------------------------


async def record_payment(conn: Any, schema: str) -> int:
    bump("payment")
    cur = await conn.execute(
        sql.SQL("INSERT INTO {}.ledger (amount) VALUES (10) RETURNING id").format(
            sql.Identifier(schema)
        )
    )
    row = await cur.fetchone()
    return int(row["id"])


async def hang_first_time() -> str:
    bump("hang started")
    if not GATES["hang entered"].is_set():
        GATES["hang entered"].set()
        await trio.sleep_forever()
    return "ok"


@dt.task("pays", options=dt.SpawnOptions(retry=dt.RetryStrategy.none()))
async def pays(ctx: dt.TaskContext, schema: str) -> int:
    payment = await ctx.transaction("pay", record_payment, schema)
    await ctx.emit_event("paid", {"payment": payment})
    await ctx.step("hang", hang_first_time)
    return payment


async def test_transaction_step_is_not_repeated_after_a_crash(client: dt.Durable) -> None:
    await query(client, "CREATE TABLE {schema}.ledger (id serial PRIMARY KEY, amount int)")
    client.register(pays)
    GATES["hang entered"] = trio.Event()
    spawned = await client.spawn(pays, client.schema)
    worker = client.new_worker(dt.WorkerOptions(claim_timeout=CLAIM_TIMEOUT, poll_interval=0.05))
    worker.hand_back_on_cancel = False  # plays a process that died: nothing handed back
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await GATES["hang entered"].wait()
            nursery.cancel_scope.cancel()
    await advance_clock(client, CLAIM_TIMEOUT + 1)
    assert await run_until_idle(client) == 1
    payment = await client.wait_result(pays, spawned.task_id, timeout=10)
    assert await query(client, "SELECT id, amount FROM {schema}.ledger") == [
        {"id": payment, "amount": 10}
    ]
    assert CALLS == {"payment": 1, "hang started": 2}
    events = await query(client, "SELECT event_name, payload FROM {schema}.events")
    assert events == [{"event_name": "paid", "payload": {"payment": payment}}]
    assert (await client.get_task(spawned.task_id)).attempts == 2


async def slow_payment(conn: Any, schema: str) -> int:
    bump("slow payment")
    cur = await conn.execute(
        sql.SQL("INSERT INTO {}.ledger (amount) VALUES (20) RETURNING id").format(
            sql.Identifier(schema)
        )
    )
    row = await cur.fetchone()
    if "in transaction" in GATES and not GATES["in transaction"].is_set():
        GATES["in transaction"].set()
        await trio.sleep_forever()  # cancelled by the shutdown, inside the transaction
    return int(row["id"])


@dt.task("pays_slowly", options=dt.SpawnOptions(retry=dt.RetryStrategy.none()))
async def pays_slowly(ctx: dt.TaskContext, schema: str) -> int:
    return await ctx.transaction("pay", slow_payment, schema)


async def test_cancelled_transaction_step_writes_nothing(client: dt.Durable) -> None:
    """A run cancelled inside ctx.transaction (here by a graceful shutdown) rolls back
    its writes and hands the run back; the next attempt writes them once."""
    await query(client, "CREATE TABLE {schema}.ledger (id serial PRIMARY KEY, amount int)")
    client.register(pays_slowly)
    GATES["in transaction"] = trio.Event()
    spawned = await client.spawn(pays_slowly, client.schema)
    worker = client.new_worker(dt.WorkerOptions(shutdown_grace=0, poll_interval=0.05))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await GATES["in transaction"].wait()
            worker.shutdown()
    assert await query(client, "SELECT * FROM {schema}.ledger") == []
    assert await query(client, "SELECT * FROM {schema}.checkpoints") == []
    (run,) = await query(client, "SELECT state, attempt, wake_reason FROM {schema}.runs")
    assert run == {"state": "pending", "attempt": 1, "wake_reason": "released"}

    assert await run_until_idle(client) == 1
    payment = await client.wait_result(pays_slowly, spawned.task_id, timeout=10)
    assert await query(client, "SELECT id, amount FROM {schema}.ledger") == [
        {"id": payment, "amount": 20}
    ]
    assert CALLS == {"slow payment": 2}
    assert (await client.get_task(spawned.task_id)).attempts == 1
