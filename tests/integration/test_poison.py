"""Poison rows: a row whose stored data breaks one of a worker's statements fails its own
task, for good and saying why, and the worker goes on serving every other task.

The poison is written with plain SQL, past the library's own validation: an overflowing
retry strategy or policy, or a trigger raising for that one task's row (the most direct
way to make exactly one row break exactly one statement).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import psycopg
import pytest
import trio

import durable_trio as dt
from durable_trio.testing import advance_clock, reap_expired
from support import fetch

POISON = "durable_trio.UnprocessableTask"
HUGE_RETRY = '{"kind": "fixed", "base": 1e13, "factor": 2, "max_delay": 1e13, "jitter": 0}'


@dt.task("poison-fails")
async def fails(ctx: dt.TaskContext, _: None) -> None:
    raise RuntimeError("the attempt's own error")


@dt.task("poison-returns")
async def returns(ctx: dt.TaskContext, value: int) -> int:
    return value


@dt.task("poison-blocks")
async def blocks(ctx: dt.TaskContext, _: None) -> None:
    await trio.sleep_forever()


HELD = trio.Event()


@dt.task("poison-held")
async def held(ctx: dt.TaskContext, _: None) -> str:
    await HELD.wait()
    return "held"


@asynccontextmanager
async def serving(
    client: dt.Durable, options: dt.WorkerOptions | None = None
) -> AsyncIterator[dt.Worker]:
    """A worker running in the background for the block; it must still be alive at its end
    (a crash of its loops would surface here as the nursery's error)."""
    worker = client.new_worker(options or dt.WorkerOptions(concurrency=4, poll_interval=0.05))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        yield worker
        worker.shutdown()


async def until_terminal(client: dt.Durable, task_id: UUID, seconds: float = 15) -> dt.TaskInfo:
    with trio.fail_after(seconds):
        while True:
            info = await client.get_task(task_id)
            if info.state in (dt.TaskState.COMPLETED, dt.TaskState.FAILED, dt.TaskState.CANCELLED):
                return info
            await trio.sleep(0.02)


async def canary_completes(client: dt.Durable, value: int = 42) -> None:
    spawned = await client.spawn(returns, value)
    assert await client.wait_result(returns, spawned.task_id, timeout=15) == value


def assert_poisoned(info: dt.TaskInfo, stage: str, *fragments: str) -> None:
    assert info.state is dt.TaskState.FAILED, info
    assert info.error is not None
    assert info.error["type"] == POISON, info.error
    assert info.error["stage"] == stage, info.error
    assert info.error["retryable"] is False
    for fragment in fragments:
        assert fragment in info.error["message"], info.error


async def raise_on_update(client: dt.Durable, table: str, task_id: UUID, when: str) -> None:
    """A trigger that makes updates of one task's rows of `table` matching `when` fail
    with a data error, as an out-of-range value would."""
    await raise_on(client, "UPDATE", table, task_id, when)


async def raise_on(client: dt.Durable, event: str, table: str, task_id: UUID, when: str) -> None:
    await fetch(
        client,
        "CREATE OR REPLACE FUNCTION @s.poison() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN RAISE EXCEPTION 'poisoned row' USING ERRCODE = 'datetime_field_overflow';"
        " END $$",
    )
    await fetch(
        client,
        f"CREATE TRIGGER poison_{table} BEFORE {event} ON @s.{table} FOR EACH ROW"
        f" WHEN (NEW.task_id = '{task_id}' AND {when}) EXECUTE FUNCTION @s.poison()",
    )


async def poison_retry(client: dt.Durable, task_id: UUID, how: str) -> None:
    """ "overflow": the original report, a stored retry delay of 1e13 s (past the
    timestamp range; a bound on stored delays may clamp it, making it harmless).
    "trigger": inserting the task's next attempt fails, whatever the delay."""
    if how == "overflow":
        await fetch(client, "UPDATE @s.tasks SET retry = %s::jsonb", HUGE_RETRY)
    else:
        await raise_on(client, "INSERT", "runs", task_id, "NEW.attempt > 1")


async def until_attempted(client: dt.Durable, task_id: UUID) -> dt.TaskInfo:
    """The task once its first attempt's failure is recorded: ended, or retrying."""
    with trio.fail_after(15):
        while True:
            info = await client.get_task(task_id)
            if info.attempts > 1 or info.state in (dt.TaskState.FAILED, dt.TaskState.COMPLETED):
                return info
            await trio.sleep(0.02)


# -- retries that overflow (the original report) ----------------------------------------


@pytest.mark.parametrize("how", ["overflow", "trigger"])
async def test_a_retry_that_cannot_be_scheduled_fails_the_task_not_the_worker(
    client: dt.Durable, how: str
) -> None:
    client.register(fails, returns)
    bad = await client.spawn(fails, None, options=dt.SpawnOptions(max_attempts=3))
    await poison_retry(client, bad.task_id, how)
    async with serving(client):
        info = await until_attempted(client, bad.task_id)
        await canary_completes(client)
    if how == "overflow" and info.state is dt.TaskState.PENDING:
        assert info.attempts == 2  # clamped: the retry waits the longest delay allowed
        return
    assert_poisoned(info, "retry", "could not be scheduled")
    assert "out of range" in info.error["message"] or "poisoned row" in info.error["message"]
    assert info.error["cause"]["message"] == "the attempt's own error"
    assert info.attempts == 1


@pytest.mark.parametrize("how", ["overflow", "trigger"])
async def test_the_reaper_fails_a_task_whose_retry_cannot_be_scheduled_and_goes_on(
    client: dt.Durable, how: str
) -> None:
    client.register(blocks, returns)
    bad = await client.spawn(blocks, None, options=dt.SpawnOptions(max_attempts=3))
    # Claimed by a worker that then vanished.
    claimed = await client.store.claim(client.queue, "ghost", ["poison-blocks"], 1, 1.0)
    assert len(claimed) == 1
    await poison_retry(client, bad.task_id, how)
    await advance_clock(client, 5)
    assert await reap_expired(client) == 1  # used to raise DatetimeFieldOverflow
    info = await client.get_task(bad.task_id)
    if how == "trigger" or info.state is not dt.TaskState.PENDING:  # unless clamped
        assert_poisoned(info, "reap", "lease of attempt 1 expired")
        assert info.error["cause"]["type"] == "LeaseExpired"
    async with serving(client):  # and every worker afterwards serves the queue
        await canary_completes(client)


# -- the claim ---------------------------------------------------------------------------


@pytest.mark.parametrize(("concurrency", "version"), [(1, None), (4, None), (4, "v1")])
async def test_a_run_that_breaks_the_claim_is_failed_and_the_rest_claimed(
    client: dt.Durable, concurrency: int, version: str | None
) -> None:
    """With one run at a time, the poison comes last: its claim rides along with the
    writer's completion of the run before it."""
    client.register(returns)
    priority = -10 if concurrency == 1 else 10
    bad = await client.spawn(returns, 1, options=dt.SpawnOptions(priority=priority))
    others = [await client.spawn(returns, n) for n in (2, 3, 4)]
    await raise_on_update(client, "runs", bad.task_id, "NEW.state = 'running'")
    options = dt.WorkerOptions(concurrency=concurrency, poll_interval=0.05, version=version)
    async with serving(client, options):
        for n, other in zip((2, 3, 4), others, strict=True):
            assert await client.wait_result(returns, other.task_id, timeout=15) == n
        info = await until_terminal(client, bad.task_id)
        await canary_completes(client)
    assert_poisoned(info, "claim", "claiming this run failed", "poisoned row", "22008")


async def test_an_overflowing_max_duration_does_not_break_the_claim(client: dt.Durable) -> None:
    client.register(returns)
    bad = await client.spawn(returns, 1, options=dt.SpawnOptions(priority=10))
    # Its deadline (first start + max_duration) is out of the timestamp range.
    await fetch(
        client,
        "UPDATE @s.tasks SET max_duration = '170000000 years' WHERE task_id = %s",
        bad.task_id,
    )
    async with serving(client):
        info = await until_terminal(client, bad.task_id)
        await canary_completes(client)
    if info.state is not dt.TaskState.COMPLETED:  # unless a guard made the value harmless
        assert_poisoned(info, "claim", "out of range")


@pytest.mark.parametrize(
    ("column", "value", "fragment"),
    [
        ("headers", "[1, 2]", "stored data could not be read"),
        ("retry", '{"kind": "sometimes"}', "'sometimes'"),
    ],
)
async def test_a_claimed_run_whose_data_cannot_be_read_fails_its_task(
    client: dt.Durable, column: str, value: str, fragment: str
) -> None:
    client.register(returns)
    bad = await client.spawn(returns, 1)
    await fetch(
        client, f"UPDATE @s.tasks SET {column} = %s::jsonb WHERE task_id = %s", value, bad.task_id
    )
    async with serving(client):
        info = await until_terminal(client, bad.task_id)
        await canary_completes(client)
    assert_poisoned(info, "claim", fragment)


# -- the heartbeat -------------------------------------------------------------------------


async def test_a_run_that_breaks_the_heartbeat_is_failed_and_the_rest_renewed(
    client: dt.Durable,
) -> None:
    HELD.__init__()  # type: ignore[misc]
    client.register(blocks, held, returns)
    good = await client.spawn(held, None)
    bad = await client.spawn(blocks, None)
    await raise_on_update(
        client, "runs", bad.task_id, "NEW.state = 'running' AND OLD.state = 'running'"
    )
    options = dt.WorkerOptions(concurrency=4, poll_interval=0.05, claim_timeout=0.6)
    async with serving(client, options):
        info = await until_terminal(client, bad.task_id)
        # Several more heartbeats: the other run keeps its lease throughout.
        await trio.sleep(1.0)
        HELD.set()
        assert await client.wait_result(held, good.task_id, timeout=15) == "held"
        await canary_completes(client)
    assert_poisoned(info, "heartbeat", "heartbeat could not be recorded", "poisoned row")
    assert (await client.get_task(good.task_id)).attempts == 1


async def test_an_overflowing_max_duration_does_not_break_the_heartbeat(
    client: dt.Durable,
) -> None:
    HELD.__init__()  # type: ignore[misc]
    client.register(blocks, held, returns)
    good = await client.spawn(held, None)
    bad = await client.spawn(blocks, None)
    options = dt.WorkerOptions(concurrency=4, poll_interval=0.05, claim_timeout=0.6)
    async with serving(client, options):
        with trio.fail_after(10):
            while (await client.get_task(bad.task_id)).state is not dt.TaskState.RUNNING:
                await trio.sleep(0.02)
        # Running now: its max_duration deadline (first start + max_duration) is out of
        # the timestamp range, which each heartbeat computes.
        await fetch(
            client,
            "UPDATE @s.tasks SET max_duration = '170000000 years' WHERE task_id = %s",
            bad.task_id,
        )
        await trio.sleep(1.0)  # several heartbeats
        HELD.set()
        assert await client.wait_result(held, good.task_id, timeout=15) == "held"
        await canary_completes(client)
        info = await client.get_task(bad.task_id)
    if info.state is not dt.TaskState.RUNNING:  # unless a guard made the value harmless
        assert_poisoned(info, "heartbeat", "out of range")


# -- the writer ----------------------------------------------------------------------------


async def test_a_completion_that_breaks_its_batch_fails_its_task_alone(
    client: dt.Durable,
) -> None:
    client.register(returns)
    spawned = await client.spawn_many(returns, list(range(20)))
    bad = spawned[7]
    await raise_on_update(client, "tasks", bad.task_id, "NEW.state = 'completed'")
    async with serving(client, dt.WorkerOptions(concurrency=8, poll_interval=0.05)):
        info = await until_terminal(client, bad.task_id)
        for n, task in enumerate(spawned):
            if task is not bad:
                assert await client.wait_result(returns, task.task_id, timeout=15) == n
        await canary_completes(client)
    assert_poisoned(info, "record", "could not be recorded", "poisoned row")


# -- the deadline sweep --------------------------------------------------------------------


async def test_a_deadline_that_breaks_the_sweep_fails_its_task_and_the_sweep_goes_on(
    client: dt.Durable,
) -> None:
    policy = dt.CancellationPolicy(max_pending_delay=1)
    options = dt.SpawnOptions(cancellation=policy)
    # Under a name no worker runs: only the sweep can enforce these deadlines.
    bad = await client.spawn_by_name("poison-nobody", {}, options=options)
    late = await client.spawn_by_name("poison-nobody", {}, options=options)
    await raise_on_update(client, "tasks", bad.task_id, "NEW.state = 'cancelled'")
    await advance_clock(client, 60)
    await reap_expired(client)
    info = await client.get_task(bad.task_id)
    assert_poisoned(info, "deadline", "max_pending_delay deadline", "poisoned row")
    other = await client.get_task(late.task_id)
    assert other.state is dt.TaskState.CANCELLED
    assert other.cancel_reason == "max_pending_delay exceeded"
    rows: list[dict[str, Any]] = await fetch(client, "SELECT task_id FROM @s.deadlines")
    assert rows == []


async def test_an_overflowing_pending_delay_does_not_stop_the_sweep(client: dt.Durable) -> None:
    policy = dt.CancellationPolicy(max_pending_delay=1)
    options = dt.SpawnOptions(cancellation=policy)
    bad = await client.spawn_by_name("poison-nobody", {}, options=options)
    late = await client.spawn_by_name("poison-nobody", {}, options=options)
    # Its deadline row falls due, but recomputing the deadline overflows.
    await fetch(
        client,
        "UPDATE @s.tasks SET max_pending_delay = '170000000 years' WHERE task_id = %s",
        bad.task_id,
    )
    await advance_clock(client, 60)
    await reap_expired(client)
    other = await client.get_task(late.task_id)
    assert other.state is dt.TaskState.CANCELLED
    info = await client.get_task(bad.task_id)
    if info.state is not dt.TaskState.PENDING:  # unless a guard made the value harmless
        assert_poisoned(info, "deadline", "out of range")


async def test_a_due_time_out_of_range_does_not_stop_the_worker(
    client: dt.Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.register(returns)
    async with serving(client) as worker:
        store: Any = worker._control

        async def next_due(*args: Any) -> float | None:
            raise psycopg.errors.IntervalFieldOverflow("interval out of range")

        monkeypatch.setattr(store, "next_due", next_due)
        await trio.sleep(0.2)  # several idle waits
        await canary_completes(client)
