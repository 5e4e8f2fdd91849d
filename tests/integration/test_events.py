"""Events: await_event / emit_event, stickiness, transactions, timeouts, and the
emit-vs-await race made deterministic with two connections and the advisory lock."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
import pytest
import trio

import durable_trio as dt
from durable_trio.testing import advance_clock, database_now, run_until_idle
from support import fetch


async def run_row(client: dt.Durable, task_id: UUID) -> dict[str, Any]:
    (row,) = await fetch(
        client,
        "SELECT state, worker_id, wake_reason, available_at::text AS available_at"
        " FROM @s.runs WHERE task_id = %s",
        task_id,
    )
    return row


async def checkpoints(client: dt.Durable, task_id: UUID, name: str) -> list[Any]:
    rows = await fetch(
        client,
        "SELECT value FROM @s.checkpoints WHERE task_id = %s AND name = %s",
        task_id,
        name,
    )
    return [r["value"] for r in rows]


async def waits_count(client: dt.Durable) -> int:
    return int((await fetch(client, "SELECT count(*) AS n FROM @s.waits"))[0]["n"])


@attrs.frozen
class Packed:
    order_id: str
    boxes: int


@attrs.frozen
class Received:
    payload: Packed
    attempt: int


@dt.task("typed_waiter")
async def typed_waiter(ctx: dt.TaskContext, event: str) -> Received:
    payload = await ctx.await_event(event, type=Packed)
    assert isinstance(payload, Packed)
    return Received(payload, ctx.attempt)


@dt.task("plain_waiter")
async def plain_waiter(ctx: dt.TaskContext, event: str) -> Any:
    return await ctx.await_event(event)


async def test_await_event_suspends_then_returns_typed_payload(client: dt.Durable) -> None:
    client.register(typed_waiter)
    spawned = await client.spawn(typed_waiter, "packed:1")
    assert await run_until_idle(client) == 1
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING
    run = await run_row(client, spawned.task_id)
    assert run["state"] == "sleeping"
    assert run["worker_id"] is None
    assert await waits_count(client) == 1

    # Nothing else wakes it: no event, no timeout.
    await advance_clock(client, 365 * 86400)
    assert await run_until_idle(client) == 0

    assert await client.emit_event("packed:1", {"order_id": "1", "boxes": 3}) == 1
    run = await run_row(client, spawned.task_id)
    assert run["state"] == "pending"
    assert run["wake_reason"] == "event"
    assert await waits_count(client) == 0
    assert await checkpoints(client, spawned.task_id, "$event:packed:1") == [
        {"payload": {"order_id": "1", "boxes": 3}}
    ]
    assert await run_until_idle(client) == 1
    result = await client.wait_result(typed_waiter, spawned.task_id, timeout=10)
    assert result == Received(Packed("1", 3), attempt=1)


async def test_event_emitted_before_the_wait_is_delivered(client: dt.Durable) -> None:
    client.register(typed_waiter)
    assert await client.emit_event("early", {"order_id": "e", "boxes": 1}) == 0
    spawned = await client.spawn(typed_waiter, "early")
    assert await run_until_idle(client) == 1  # delivered at once: never suspended
    result = await client.wait_result(typed_waiter, spawned.task_id, timeout=10)
    assert result == Received(Packed("e", 1), attempt=1)
    assert (await run_row(client, spawned.task_id))["wake_reason"] is None


async def test_payload_that_does_not_match_the_type_fails_the_attempt(
    client: dt.Durable,
) -> None:
    client.register(typed_waiter)
    await client.emit_event("bad", {"order_id": "x", "boxes": 1, "extra": True})
    spawned = await client.spawn(typed_waiter, "bad", options=dt.SpawnOptions(max_attempts=1))
    await run_until_idle(client)
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.FAILED
    assert info.error is not None
    assert "SerializationError" in info.error["type"]


async def test_events_are_per_queue(client: dt.Durable) -> None:
    client.register(plain_waiter)
    spawned = await client.spawn(plain_waiter, "ping")
    await run_until_idle(client)
    assert await client.emit_event("ping", 1, queue="elsewhere") == 0
    assert await run_until_idle(client) == 0
    assert await client.emit_event("ping", 2) == 1
    await run_until_idle(client)
    assert await client.wait_result(plain_waiter, spawned.task_id, timeout=10) == 2


async def test_emit_from_another_task_is_exactly_once(client: dt.Durable) -> None:
    emitted: list[int] = []

    @dt.task("emitter")
    async def emitter(ctx: dt.TaskContext, p: None) -> str:
        emitted.append(ctx.attempt)
        await ctx.emit_event("go", {"from": "task"})
        await ctx.sleep_for("nap", 60)  # forces a replay that must not emit again
        return "done"

    client.register(plain_waiter, emitter)
    waiter = await client.spawn(plain_waiter, "go")
    await run_until_idle(client)
    assert (await client.get_task(waiter.task_id)).state is dt.TaskState.SLEEPING

    sender = await client.spawn(emitter, None)
    await run_until_idle(client)  # the emitter emits and sleeps; the waiter wakes and ends
    assert await client.wait_result(plain_waiter, waiter.task_id, timeout=10) == {"from": "task"}
    assert (await client.get_task(sender.task_id)).state is dt.TaskState.SLEEPING

    # Someone else replaces the payload; the emitter's replay must not emit it again.
    await client.emit_event("go", {"from": "client"})
    await advance_clock(client, 61)
    await run_until_idle(client)
    assert await client.wait_result(emitter, sender.task_id, timeout=10) == "done"
    assert emitted == [1, 1]  # the body ran twice (replay) ...
    (row,) = await fetch(client, "SELECT payload FROM @s.events WHERE event_name = 'go'")
    assert row["payload"] == {"from": "client"}  # ... but emitted once
    assert len(await checkpoints(client, sender.task_id, "$emit:go")) == 1


async def test_emit_in_caller_transaction(client: dt.Durable) -> None:
    client.register(plain_waiter)
    spawned = await client.spawn(plain_waiter, "tx")
    await run_until_idle(client)

    async with client.connection() as conn:
        assert await client.emit_event("tx", "rolled back", connection=conn) == 1
        await conn.rollback()
    assert await fetch(client, "SELECT * FROM @s.events") == []
    assert (await run_row(client, spawned.task_id))["state"] == "sleeping"
    assert await waits_count(client) == 1
    assert await run_until_idle(client) == 0

    async with client.connection() as conn:
        await conn.execute(f'CREATE TABLE "{client.schema}".orders (id int)')
        await conn.execute(f'INSERT INTO "{client.schema}".orders VALUES (7)')
        assert await client.emit_event("tx", "committed", connection=conn) == 1
        # Not visible to others before the commit.
        assert (await run_row(client, spawned.task_id))["state"] == "sleeping"
        await conn.commit()
    assert (await run_row(client, spawned.task_id))["state"] == "pending"
    assert await run_until_idle(client) == 1
    assert await client.wait_result(plain_waiter, spawned.task_id, timeout=10) == "committed"
    assert await fetch(client, "SELECT id FROM @s.orders") == [{"id": 7}]


async def test_timeout_raises_and_replay_takes_the_same_branch(client: dt.Durable) -> None:
    branches: list[str] = []

    @dt.task("patient")
    async def patient(ctx: dt.TaskContext, p: None) -> str:
        try:
            payload = await ctx.await_event("reply", timeout=3600)
        except dt.EventTimeout as ex:
            outcome = f"timed out on {ex.event_name}"
        else:
            outcome = f"got {payload}"
        branches.append(outcome)
        await ctx.sleep_for("after", 10)  # forces one more replay
        return outcome

    client.register(patient)
    spawned = await client.spawn(patient, None)
    await run_until_idle(client)
    run = await run_row(client, spawned.task_id)
    assert run["state"] == "sleeping"

    await advance_clock(client, 3500)
    assert await run_until_idle(client) == 0
    await advance_clock(client, 101)
    assert await run_until_idle(client) == 1
    assert branches == ["timed out on reply"]
    assert await checkpoints(client, spawned.task_id, "$event:reply") == [{"timeout": True}]
    assert await waits_count(client) == 0

    # The event arrives late: it wakes nobody and changes nothing on replay.
    assert await client.emit_event("reply", "too late") == 0
    await advance_clock(client, 11)
    assert await run_until_idle(client) == 1
    assert await client.wait_result(patient, spawned.task_id, timeout=10) == "timed out on reply"
    assert branches == ["timed out on reply", "timed out on reply"]


async def test_event_before_timeout_wins(client: dt.Durable) -> None:
    @dt.task("patient2")
    async def patient2(ctx: dt.TaskContext, p: None) -> str:
        try:
            return str(await ctx.await_event("reply", timeout=3600))
        except dt.EventTimeout:
            return "timed out on reply"

    client.register(patient2)
    spawned = await client.spawn(patient2, None)
    await run_until_idle(client)
    await advance_clock(client, 1800)
    assert await client.emit_event("reply", "in time") == 1
    await advance_clock(client, 3600)  # the deadline passes before the run is claimed
    await run_until_idle(client)
    assert await client.wait_result(patient2, spawned.task_id, timeout=10) == "in time"


async def test_wait_records_its_deadline(client: dt.Durable) -> None:
    """The timeout is fixed when the wait starts: the wait row and the sleeping run carry
    the deadline (an untimed wait is never due by itself)."""

    @dt.task("deadline_waiter")
    async def deadline_waiter(ctx: dt.TaskContext, timeout: float | None) -> str:
        try:
            await ctx.await_event("never", timeout=timeout)
        except dt.EventTimeout:
            return "timed out"
        return "event"  # pragma: no cover

    client.register(deadline_waiter)
    start = await database_now(client)
    timed = await client.spawn(deadline_waiter, 1000.0)
    untimed = await client.spawn(deadline_waiter, None)
    await run_until_idle(client)
    rows = await fetch(
        client,
        "SELECT w.task_id, w.timeout_at::text AS timeout_at, r.available_at::text AS due"
        " FROM @s.waits w JOIN @s.runs r USING (task_id)",
    )
    by_task = {r["task_id"]: r for r in rows}
    assert by_task[untimed.task_id]["timeout_at"] is None
    assert by_task[untimed.task_id]["due"] == "infinity"
    deadline = datetime.fromisoformat(by_task[timed.task_id]["timeout_at"])
    assert by_task[timed.task_id]["due"] == by_task[timed.task_id]["timeout_at"]
    assert timedelta(seconds=1000) <= deadline - start < timedelta(seconds=1030)

    await advance_clock(client, deadline - await database_now(client) - timedelta(seconds=5))
    assert await run_until_idle(client) == 0
    await advance_clock(client, 6)
    assert await run_until_idle(client) == 1
    assert await client.wait_result(deadline_waiter, timed.task_id, timeout=10) == "timed out"
    assert (await client.get_task(untimed.task_id)).state is dt.TaskState.SLEEPING


async def test_second_emit_replaces_payload_for_later_waiters(client: dt.Durable) -> None:
    """What is asserted: a wait receives the payload current when it is delivered, and
    keeps it (it is checkpointed at delivery). A waiter woken by the first emit keeps the
    first payload even if it runs only after a second emit; a wait that starts after the
    second emit receives the second payload."""
    client.register(plain_waiter)
    first = await client.spawn(plain_waiter, "cfg")
    await run_until_idle(client)
    assert await client.emit_event("cfg", "v1") == 1
    # `first` is woken (payload checkpointed) but has not run yet when v2 arrives.
    assert await client.emit_event("cfg", "v2") == 0
    second = await client.spawn(plain_waiter, "cfg")
    await run_until_idle(client)
    assert await client.wait_result(plain_waiter, first.task_id, timeout=10) == "v1"
    assert await client.wait_result(plain_waiter, second.task_id, timeout=10) == "v2"
    (row,) = await fetch(client, "SELECT payload FROM @s.events WHERE event_name = 'cfg'")
    assert row["payload"] == "v2"


async def test_many_waiters_one_emit(client: dt.Durable) -> None:
    client.register(plain_waiter)
    spawned = [await client.spawn(plain_waiter, "broadcast") for _ in range(5)]
    await run_until_idle(client)
    assert await client.emit_event("broadcast", [1, 2]) == 5
    assert await run_until_idle(client) == 5
    for s in spawned:
        assert await client.wait_result(plain_waiter, s.task_id, timeout=10) == [1, 2]


# -- the emit / await race, made deterministic ---------------------------------------


async def wait_until_blocked(client: dt.Durable, function: str) -> None:
    """Wait until a backend running `function` of this schema waits on an advisory lock."""
    pattern = f"%{client.schema}%.{function}(%"
    with trio.fail_after(10):
        while True:
            rows = await fetch(
                client,
                "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND wait_event = 'advisory' AND query LIKE %s",
                pattern,
            )
            if rows[0]["n"] == 1:
                return
            await trio.sleep(0.005)


async def test_race_emit_holds_the_lock_then_await_sees_the_event(client: dt.Durable) -> None:
    """B's emit holds the advisory lock (uncommitted); the task's await_event blocks on
    it; B commits; the await finds the event and never suspends."""
    reached = trio.Event()

    @dt.task("race_waiter")
    async def race_waiter(ctx: dt.TaskContext, p: None) -> Any:
        await ctx.step("before", reached.set)
        return await ctx.await_event("race")

    client.register(race_waiter)
    async with client.connection() as conn_b:
        assert await client.emit_event("race", {"n": 1}, connection=conn_b) == 0
        spawned = await client.spawn(race_waiter, None)
        async with client.worker(dt.WorkerOptions(poll_interval=0.05)) as worker:
            await reached.wait()
            await wait_until_blocked(client, "await_event")
            assert (await client.get_task(spawned.task_id)).state is dt.TaskState.RUNNING
            await conn_b.commit()
            assert await client.wait_result(race_waiter, spawned.task_id, timeout=10) == {"n": 1}
        assert worker.claimed_total == 1
    assert await checkpoints(client, spawned.task_id, "$event:race") == [{"payload": {"n": 1}}]
    run = await run_row(client, spawned.task_id)
    assert run["state"] == "completed"
    assert run["wake_reason"] is None
    assert await waits_count(client) == 0


async def test_race_await_holds_the_lock_then_emit_wakes_it(client: dt.Durable) -> None:
    """A's await_event (a claimed run, in an open transaction) records the wait and holds
    the advisory lock; B's emit blocks on it; A commits; the emit sees the wait and wakes
    the run exactly once."""
    client.register(plain_waiter)
    spawned = await client.spawn(plain_waiter, "race")
    (claimed,) = await client.store.claim("default", "w-test", ["plain_waiter"], 1, 60)
    assert claimed.task_id == spawned.task_id
    woken: list[int] = []

    async def emit() -> None:
        woken.append(await client.store.emit_event("default", "race", '{"n": 2}'))

    async with client.connection() as conn_a:
        cur = await conn_a.execute(
            f'SELECT * FROM "{client.schema}".await_event(%s, %s, %s, %s, %s, NULL)',
            (claimed.run_id, "w-test", "default", "race", "$event:race"),
        )
        assert await cur.fetchone() == {"outcome": "suspended", "payload": None}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(emit)
            await wait_until_blocked(client, "deliver_event")
            assert woken == []
            await conn_a.commit()
    assert woken == [1]
    run = await run_row(client, spawned.task_id)
    assert run["state"] == "pending"
    assert run["wake_reason"] == "event"
    assert await checkpoints(client, spawned.task_id, "$event:race") == [{"payload": {"n": 2}}]
    assert await waits_count(client) == 0
    # A second emit finds no waiter: the wake-up happened exactly once.
    assert await client.store.emit_event("default", "race", '{"n": 3}') == 0
    assert await run_until_idle(client) == 1
    assert await client.wait_result(plain_waiter, spawned.task_id, timeout=10) == {"n": 2}
    (row,) = await fetch(
        client, "SELECT count(*) AS n FROM @s.runs WHERE task_id = %s", spawned.task_id
    )
    assert row["n"] == 1


async def test_a_payload_that_does_not_fit_the_type_names_the_event(client: dt.Durable) -> None:
    client.register(typed_waiter)
    spawned = await client.spawn(typed_waiter, "packed:bad")
    await run_until_idle(client)
    await client.emit_event("packed:bad", {"nope": 1})
    await run_until_idle(client)
    with pytest.raises(dt.TaskFailed) as caught:
        await client.wait_result(typed_waiter, spawned.task_id, timeout=10)
    assert "payload of event 'packed:bad': value" in str(caught.value)
