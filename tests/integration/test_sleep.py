"""Durable timers: sleep_for / sleep_until suspend the run, free the worker slot, and wake
after the (fake) clock passes the wake time; the replay passes the sleep without sleeping
again and without re-executing the steps before it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import attrs

import durable_trio as dt
from durable_trio.testing import advance_clock, database_now, run_until_idle
from support import fetch

ONE_WORKER = dt.WorkerOptions(concurrency=1, poll_interval=0.05)


async def task_row(client: dt.Durable, task_id: UUID) -> dict[str, Any]:
    return (await fetch(client, "SELECT * FROM @s.tasks WHERE task_id = %s", task_id))[0]


async def runs_of(client: dt.Durable, task_id: UUID) -> list[dict[str, Any]]:
    return await fetch(client, "SELECT * FROM @s.runs WHERE task_id = %s ORDER BY attempt", task_id)


async def checkpoint_names(client: dt.Durable, task_id: UUID) -> list[str]:
    rows = await fetch(
        client, "SELECT name FROM @s.checkpoints WHERE task_id = %s ORDER BY name", task_id
    )
    return [r["name"] for r in rows]


@attrs.frozen
class Nap:
    seconds: float


@attrs.frozen
class Until:
    when: datetime


def make_sleeper(calls: list[str]) -> dt.TaskDefinition[Nap, str]:
    @dt.task("sleeper")
    async def sleeper(ctx: dt.TaskContext, p: Nap) -> str:
        calls.append("body")

        def before() -> str:
            calls.append("before")
            return "b"

        def after() -> str:
            calls.append("after")
            return "a"

        b = await ctx.step("before", before)
        await ctx.sleep_for("nap", p.seconds)
        a = await ctx.step("after", after)
        return b + a

    return sleeper


async def test_sleep_for_suspends_and_frees_the_slot(client: dt.Durable) -> None:
    calls: list[str] = []
    sleeper = make_sleeper(calls)

    @dt.task("quick")
    async def quick(ctx: dt.TaskContext, p: int) -> int:
        return await ctx.step("double", lambda: p * 2)

    client.register(sleeper, quick)
    slept = await client.spawn(sleeper, Nap(3600))
    # Spawned second: with concurrency=1 it can only run once the sleeper gave back the slot.
    other = await client.spawn(quick, 21)

    claimed = await run_until_idle(client, ONE_WORKER)
    assert claimed == 2
    assert await client.wait_result(quick, other.task_id, timeout=10) == 42

    info = await client.get_task(slept.task_id)
    assert info.state is dt.TaskState.SLEEPING
    (run,) = await runs_of(client, slept.task_id)
    assert run["state"] == "sleeping"
    assert run["worker_id"] is None
    assert run["lease_expires_at"] is None
    assert run["wake_reason"] == "timer"
    assert calls == ["body", "before"]
    assert await checkpoint_names(client, slept.task_id) == ["$sleep:nap", "before"]

    # Not due yet: nothing is claimable and the task stays asleep.
    await advance_clock(client, 3500)
    assert await run_until_idle(client, ONE_WORKER) == 0
    assert (await client.get_task(slept.task_id)).state is dt.TaskState.SLEEPING

    await advance_clock(client, 101)
    assert await run_until_idle(client, ONE_WORKER) == 1
    assert await client.wait_result(sleeper, slept.task_id, timeout=10) == "ba"
    # The replay re-ran the body but not the step before the sleep, and did not sleep again.
    assert calls == ["body", "before", "body", "after"]
    (run,) = await runs_of(client, slept.task_id)
    assert run["state"] == "completed"
    assert run["attempt"] == 1
    info = await client.get_task(slept.task_id)
    assert info.attempts == 1
    assert await checkpoint_names(client, slept.task_id) == ["$sleep:nap", "after", "before"]


async def test_sleep_wake_time_is_fixed_by_first_call(client: dt.Durable) -> None:
    calls: list[str] = []
    sleeper = make_sleeper(calls)
    client.register(sleeper)
    spawned = await client.spawn(sleeper, Nap(600))
    start = await database_now(client)
    await run_until_idle(client)
    (stored,) = await fetch(
        client,
        "SELECT value FROM @s.checkpoints WHERE task_id = %s AND name = '$sleep:nap'",
        spawned.task_id,
    )
    wake_at = datetime.fromisoformat(stored["value"]["wake_at"])
    assert timedelta(seconds=600) <= wake_at - start < timedelta(seconds=660)
    (run,) = await runs_of(client, spawned.task_id)
    assert run["available_at"] == wake_at

    await advance_clock(client, 601)
    await run_until_idle(client)
    assert await client.wait_result(sleeper, spawned.task_id, timeout=10) == "ba"


async def test_zero_sleep_does_not_suspend(client: dt.Durable) -> None:
    calls: list[str] = []
    sleeper = make_sleeper(calls)
    client.register(sleeper)
    spawned = await client.spawn(sleeper, Nap(0))
    assert await run_until_idle(client) == 1
    assert await client.wait_result(sleeper, spawned.task_id, timeout=10) == "ba"
    assert calls == ["body", "before", "after"]


@dt.task("until")
async def until_task(ctx: dt.TaskContext, p: Until) -> str:
    first = await ctx.step("first", lambda: "one")
    await ctx.sleep_until("alarm", p.when)
    second = await ctx.step("second", lambda: "two")
    return f"{first}-{second}"


async def test_sleep_until(client: dt.Durable) -> None:
    client.register(until_task)
    when = await database_now(client) + timedelta(days=1)
    spawned = await client.spawn(until_task, Until(when))
    await run_until_idle(client)
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING
    (run,) = await runs_of(client, spawned.task_id)
    assert run["state"] == "sleeping"
    assert run["available_at"] == when

    await advance_clock(client, timedelta(hours=23))
    assert await run_until_idle(client) == 0
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING

    await advance_clock(client, timedelta(hours=1, seconds=1))
    assert await run_until_idle(client) == 1
    assert await client.wait_result(until_task, spawned.task_id, timeout=10) == "one-two"


async def test_sleep_until_in_the_past_does_not_suspend(client: dt.Durable) -> None:
    client.register(until_task)
    when = await database_now(client) - timedelta(minutes=5)
    spawned = await client.spawn(until_task, Until(when))
    assert await run_until_idle(client) == 1
    assert await client.wait_result(until_task, spawned.task_id, timeout=10) == "one-two"


async def test_sleep_inside_except_exception_still_suspends(client: dt.Durable) -> None:
    swallowed: list[BaseException] = []

    @dt.task("stubborn")
    async def stubborn(ctx: dt.TaskContext, p: None) -> str:
        try:
            await ctx.sleep_for("nap", 60)
        except Exception as ex:  # noqa: BLE001 - the point of the test
            swallowed.append(ex)
            return "swallowed"
        return "woke"

    client.register(stubborn)
    spawned = await client.spawn(stubborn, None)
    await run_until_idle(client)
    assert swallowed == []
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING
    await advance_clock(client, 61)
    await run_until_idle(client)
    assert await client.wait_result(stubborn, spawned.task_id, timeout=10) == "woke"
    assert swallowed == []


async def test_two_sleeps_in_a_row_each_suspend_once(client: dt.Durable) -> None:
    bodies: list[int] = []

    @dt.task("twice")
    async def twice(ctx: dt.TaskContext, p: None) -> int:
        bodies.append(1)
        await ctx.sleep_for("nap", 100)
        await ctx.sleep_for("nap", 100)  # same name: stored as "$sleep:nap#2"
        return len(bodies)

    client.register(twice)
    spawned = await client.spawn(twice, None)
    assert await run_until_idle(client) == 1
    await advance_clock(client, 101)
    assert await run_until_idle(client) == 1
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING
    # The second sleep started when the first woke: 50 s more is not enough.
    await advance_clock(client, 50)
    assert await run_until_idle(client) == 0
    await advance_clock(client, 51)
    assert await run_until_idle(client) == 1
    assert await client.wait_result(twice, spawned.task_id, timeout=10) == 3
    assert await checkpoint_names(client, spawned.task_id) == ["$sleep:nap", "$sleep:nap#2"]


async def test_sleep_survives_a_retry(client: dt.Durable) -> None:
    """A retry after the sleep replays the finished sleep instead of sleeping again."""
    attempts: list[int] = []

    @dt.task(
        "flaky_sleeper",
        options=dt.SpawnOptions(max_attempts=2, retry=dt.RetryStrategy.none()),
    )
    async def flaky(ctx: dt.TaskContext, p: None) -> int:
        await ctx.sleep_for("nap", 100)
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("boom")
        return ctx.attempt

    client.register(flaky)
    spawned = await client.spawn(flaky, None)
    await run_until_idle(client)
    await advance_clock(client, 101)
    await run_until_idle(client)
    assert await client.wait_result(flaky, spawned.task_id, timeout=10) == 2
    assert attempts == [1, 2]
