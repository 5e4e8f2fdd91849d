"""Edge cases that once could take a worker down or break cancellation."""

from __future__ import annotations

from typing import Any

import trio

import durable_trio as dt
from durable_trio.testing import advance_clock, run_until_idle


@dt.task("nul-error")
async def nul_error(ctx: dt.TaskContext, _: None) -> None:
    raise RuntimeError("bad byte \x00 and lone \ud800 surrogate")


@dt.task("fine")
async def fine(ctx: dt.TaskContext, value: int) -> int:
    return value


async def test_unstorable_error_text_fails_the_task_not_the_worker(client: dt.Durable) -> None:
    client.register(nul_error, fine)
    bad = await client.spawn(nul_error, None, options=dt.SpawnOptions(max_attempts=1))
    good = await client.spawn(fine, 7)
    await run_until_idle(client)
    info = await client.get_task(bad.task_id)
    assert info.state is dt.TaskState.FAILED
    assert info.error is not None
    assert "bad byte \\0" in info.error["message"]
    assert await client.wait_result(fine, good.task_id, timeout=5) == 7


@dt.task("child-of")
async def child(ctx: dt.TaskContext, value: int) -> str:
    return f"{ctx.queue}:{value}"


@dt.task("parent-on-b")
async def parent(ctx: dt.TaskContext, value: int) -> str:
    handle = await ctx.spawn("kid", child, value)
    result: str = await ctx.join("kid", handle)
    return result


async def test_children_default_to_the_parents_queue(pg_url: str, schema: str) -> None:
    async with dt.Durable.connect(pg_url, queue="a", schema=schema) as client:
        client.register(parent, child)
        spawned = await client.spawn(parent, 3, options=dt.SpawnOptions(queue="b"))
        await run_until_idle(client, dt.WorkerOptions(queues=["b"], poll_interval=0.05))
        assert await client.wait_result(parent, spawned.task_id, timeout=5) == "b:3"


async def test_child_of_an_ended_parent_is_cancelled_when_claimed(client: dt.Durable) -> None:
    client.register(fine)
    parent_task = await client.spawn_by_name("absent-parent", {})
    await client.cancel(parent_task.task_id)
    # A child committed after the parent's cancellation walked the tree (the race a
    # spawn inside the parent's own transaction can lose).
    row = client._core.spawn_row(fine, 1, None, parent=parent_task.task_id)
    await client.store.spawn(row)
    await run_until_idle(client)
    info = await client.get_task(row["task_id"])
    assert info.state is dt.TaskState.CANCELLED
    assert info.cancel_reason is not None
    assert "parent" in info.cancel_reason


@dt.task("nursery-sleep")
async def nursery_sleep(ctx: dt.TaskContext, _: None) -> str:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ctx.sleep_for, "nap", 60)
    return "woke"


async def test_suspension_inside_a_user_nursery_suspends(client: dt.Durable) -> None:
    client.register(nursery_sleep)
    spawned = await client.spawn(nursery_sleep, None)
    await run_until_idle(client)
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.SLEEPING
    await advance_clock(client, 61)
    await run_until_idle(client)
    result: Any = await client.wait_result(nursery_sleep, spawned.task_id, timeout=5)
    assert result == "woke"
