"""TaskInfo tells what a task is doing: which attempt it is on, and when a waiting retry
is due (next_attempt_at)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import durable_trio as dt
from durable_trio.testing import advance_clock, database_now, run_until_idle
from support import fetch


@dt.task("flaky")
async def flaky(ctx: dt.TaskContext, p: Any) -> str:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    await ctx.sleep_for("nap", 30)
    return "done"


async def test_next_attempt_at_while_a_retry_waits(client: dt.Durable) -> None:
    client.register(flaky)
    spawned = await client.spawn(
        flaky, None, options=dt.SpawnOptions(retry=dt.RetryStrategy.fixed(60), delay=5)
    )
    info = await client.get_task(spawned.task_id)
    assert (info.state, info.attempts, info.next_attempt_at) == (dt.TaskState.PENDING, 1, None)

    await advance_clock(client, 5)
    await run_until_idle(client)
    failed_at = await database_now(client)
    info = await client.get_task(spawned.task_id)
    assert (info.state, info.attempts) == (dt.TaskState.PENDING, 2)
    [retry] = await fetch(
        client, "SELECT available_at FROM @s.runs WHERE task_id = %s AND attempt = 2", info.task_id
    )
    assert info.next_attempt_at == retry["available_at"]
    assert info.next_attempt_at is not None
    assert failed_at < info.next_attempt_at <= failed_at + timedelta(seconds=60)

    await advance_clock(client, 61)
    await run_until_idle(client)  # the retry runs, then sleeps: no retry is waiting
    info = await client.get_task(spawned.task_id)
    assert (info.state, info.attempts, info.next_attempt_at) == (dt.TaskState.SLEEPING, 2, None)

    await advance_clock(client, 31)
    await run_until_idle(client)
    info = await client.get_task(spawned.task_id)
    assert (info.state, info.attempts, info.next_attempt_at) == (dt.TaskState.COMPLETED, 2, None)


@dt.task("stuck")
async def stuck(ctx: dt.TaskContext, p: Any) -> None:
    raise RuntimeError("always")


async def test_no_next_attempt_once_attempts_are_spent(client: dt.Durable) -> None:
    client.register(stuck)
    options = dt.SpawnOptions(max_attempts=2, retry=dt.RetryStrategy.fixed(10))
    spawned = await client.spawn(stuck, None, options=options)
    await run_until_idle(client)
    assert (await client.get_task(spawned.task_id)).next_attempt_at is not None
    await advance_clock(client, 11)
    await run_until_idle(client)
    info = await client.get_task(spawned.task_id)
    assert (info.state, info.attempts, info.next_attempt_at) == (dt.TaskState.FAILED, 2, None)
