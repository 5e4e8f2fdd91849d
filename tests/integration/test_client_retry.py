"""Durable.retry: a failed or cancelled task gets a new attempt that resumes from its
checkpoints (or starts over), revives the children cancelled with it, and refuses, writing
nothing, what it may not retry."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest

import durable_trio as dt
from durable_trio.testing import advance_clock, run_until_idle
from support import fetch

ONCE = dt.SpawnOptions(max_attempts=1)


def make_fragile(calls: list[str], broken: list[bool]) -> dt.TaskDefinition[int, int]:
    @dt.task("fragile")
    async def fragile(ctx: dt.TaskContext, x: int) -> int:
        def expensive() -> int:
            calls.append("expensive")
            return x * 10

        value = await ctx.step("expensive", expensive)
        if broken[0]:
            raise RuntimeError("not fixed yet")
        calls.append("rest")
        return value + 1

    return fragile


async def snapshot(client: dt.Durable, task_id: UUID) -> dict[str, Any]:
    """Everything retry may write for a task."""
    task = await fetch(client, "SELECT * FROM @s.tasks WHERE task_id = %s", task_id)
    runs = await fetch(client, "SELECT * FROM @s.runs WHERE task_id = %s ORDER BY 1", task_id)
    steps = await fetch(
        client, "SELECT * FROM @s.checkpoints WHERE task_id = %s ORDER BY name", task_id
    )
    return {"task": task, "runs": runs, "steps": steps}


async def test_retry_resumes_after_the_last_checkpoint(client: dt.Durable) -> None:
    calls: list[str] = []
    broken = [True]
    fragile = make_fragile(calls, broken)
    client.register(fragile)
    spawned = await client.spawn(fragile, 4, options=ONCE)
    await run_until_idle(client)
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.FAILED
    assert calls == ["expensive"]

    broken[0] = False  # the fix is deployed
    retried = await client.retry(spawned.task_id)
    assert retried.task_id == spawned.task_id
    assert (retried.attempt, retried.revived) == (2, 0)
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.PENDING
    assert (info.attempts, info.max_attempts, info.last_run_id) == (2, 2, retried.run_id)
    assert info.finished_at is None
    await run_until_idle(client)

    assert await client.wait_result(fragile, spawned.task_id, timeout=10) == 41
    assert calls == ["expensive", "rest"]  # the finished step was not run again
    info = await client.get_task(spawned.task_id)
    assert [r.state for r in info.runs] == [dt.TaskState.FAILED, dt.TaskState.COMPLETED]
    assert info.runs[1].wake_reason == "retry"
    assert info.error is not None  # the failure stays on record


async def test_retry_from_scratch_runs_every_step_again(client: dt.Durable) -> None:
    calls: list[str] = []
    broken = [True]
    fragile = make_fragile(calls, broken)
    client.register(fragile)
    spawned = await client.spawn(fragile, 4, options=ONCE)
    await run_until_idle(client)
    broken[0] = False

    retried = await client.retry(spawned.task_id, from_scratch=True, max_attempts=5)
    assert await client.steps(spawned.task_id) == []
    info = await client.get_task(spawned.task_id)
    assert (info.attempts, info.max_attempts) == (2, 5)
    await run_until_idle(client)
    assert await client.wait_result(fragile, spawned.task_id, timeout=10) == 41
    assert calls == ["expensive", "expensive", "rest"]
    assert (await client.steps(spawned.task_id))[0].run_id == retried.run_id


async def test_retry_a_cancelled_task(client: dt.Durable) -> None:
    calls: list[str] = []
    fragile = make_fragile(calls, [False])
    client.register(fragile)
    spawned = await client.spawn(fragile, 1)
    await client.cancel(spawned.task_id, reason="oops")
    retried = await client.retry(spawned.task_id)
    info = await client.get_task(spawned.task_id)
    # Attempts left (1 of 5 used): the limit stays.
    assert (retried.attempt, info.max_attempts, info.cancel_reason) == (2, 5, None)
    await run_until_idle(client)
    assert await client.wait_result(fragile, spawned.task_id, timeout=10) == 11


async def test_retry_refuses_live_and_completed_tasks_writing_nothing(
    client: dt.Durable,
) -> None:
    calls: list[str] = []
    fragile = make_fragile(calls, [False])
    client.register(fragile)
    pending = await client.spawn(fragile, 1)
    before = await snapshot(client, pending.task_id)
    with pytest.raises(dt.RetryRefused, match="is pending: only a failed or cancelled") as got:
        await client.retry(pending.task_id)
    assert "cancel it first" in str(got.value)  # a live task can be cancelled
    assert (got.value.task_id, got.value.state) == (pending.task_id, "pending")
    assert await snapshot(client, pending.task_id) == before

    await run_until_idle(client)
    before = await snapshot(client, pending.task_id)
    with pytest.raises(dt.RetryRefused, match="is completed") as got:
        await client.retry(pending.task_id, from_scratch=True)
    # The hint must be one that can be followed: cancel does nothing to an ended task.
    assert "cancel it" not in str(got.value)
    assert "spawn a new task" in str(got.value)
    assert not await client.cancel(pending.task_id)
    assert await snapshot(client, pending.task_id) == before
    with pytest.raises(dt.TaskNotFound):
        await client.retry(uuid4())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 1}, "max_attempts must be an integer greater than"),
        ({"max_attempts": "3"}, "max_attempts must be an integer"),
        ({"max_attempts": 2}, "max_attempts must be more than the 2 attempts"),
        ({"from_scratch": "yes"}, "from_scratch must be True or False"),
    ],
)
async def test_retry_refuses_bad_arguments_writing_nothing(
    client: dt.Durable, kwargs: dict[str, Any], message: str
) -> None:
    fragile = make_fragile([], [True])
    client.register(fragile)
    spawned = await client.spawn(fragile, 1, options=dt.SpawnOptions(max_attempts=2))
    await run_until_idle(client)
    await advance_clock(client, 3600)  # past the backoff
    await run_until_idle(client)
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.FAILED
    before = await snapshot(client, spawned.task_id)
    with pytest.raises(dt.InvalidInput, match=message):
        await client.retry(spawned.task_id, **kwargs)
    assert await snapshot(client, spawned.task_id) == before
    with pytest.raises(dt.InvalidInput, match="task_id must be a UUID"):
        await client.retry("nope")  # type: ignore[arg-type]


@dt.task("kid")
async def kid(ctx: dt.TaskContext, x: int) -> int:
    await ctx.sleep_for("nap", 100)
    return await ctx.step("double", lambda: x * 2)


def make_parent(calls: list[str]) -> dt.TaskDefinition[int, int]:
    @dt.task("parent")
    async def parent(ctx: dt.TaskContext, x: int) -> int:
        handle = await ctx.spawn("kid", kid, x)
        calls.append("spawned")
        return int(await ctx.join("kid", handle)) + 1

    return parent


async def test_retry_of_a_cancelled_parent_revives_its_children(client: dt.Durable) -> None:
    calls: list[str] = []
    parent = make_parent(calls)
    client.register(parent, kid)
    spawned = await client.spawn(parent, 5)
    await run_until_idle(client)  # parent joins; the kid sleeps
    (child,) = (await client.list_tasks(parent=spawned.task_id)).items
    await client.cancel(spawned.task_id)
    assert (await client.get_task(child.task_id)).state is dt.TaskState.CANCELLED

    # The child alone may not be retried while its parent is cancelled.
    before = await snapshot(client, child.task_id)
    with pytest.raises(dt.RetryRefused, match="retry the parent") as got:
        await client.retry(child.task_id)
    assert got.value.state == "cancelled"
    assert await snapshot(client, child.task_id) == before

    retried = await client.retry(spawned.task_id)
    assert retried.revived == 1
    revived = await client.get_task(child.task_id)
    assert (revived.state, revived.attempts, revived.cancel_reason) == (
        dt.TaskState.PENDING,
        2,
        None,
    )
    await run_until_idle(client)
    # The replayed spawn found the same child, and the join waits for its new outcome.
    assert (await client.list_tasks(parent=spawned.task_id)).items == [
        await summary(client, child.task_id)
    ]
    info = await client.get_task(spawned.task_id)
    assert info.waiting_for == dt.WaitingForChild(child.task_id, "$join:kid")
    await advance_clock(client, 101)
    await run_until_idle(client)
    assert await client.wait_result(parent, spawned.task_id, timeout=10) == 11
    # The first attempt, the retry (replays the spawn, suspends on the join), its wake.
    assert calls == ["spawned"] * 3
    assert len(await fetch(client, "SELECT 1 FROM @s.tasks")) == 2  # still one child


async def test_retry_from_scratch_spawns_a_new_child(client: dt.Durable) -> None:
    calls: list[str] = []
    parent = make_parent(calls)
    client.register(parent, kid)
    spawned = await client.spawn(parent, 5)
    await run_until_idle(client)
    await client.cancel(spawned.task_id)
    retried = await client.retry(spawned.task_id, from_scratch=True)
    assert retried.revived == 0
    await run_until_idle(client)
    children = (await client.list_tasks(parent=spawned.task_id)).items
    assert [c.state for c in children] == [dt.TaskState.CANCELLED, dt.TaskState.SLEEPING]


async def test_a_retried_child_is_joined_anew_by_a_parent_that_has_not_joined(
    client: dt.Durable,
) -> None:
    broken = [True]

    @dt.task("shaky")
    async def shaky(ctx: dt.TaskContext, x: int) -> int:
        if broken[0]:
            raise RuntimeError("shaky")
        await ctx.sleep_for("slow", 1000)  # the parent joins before the retry ends
        return x

    @dt.task("patient")
    async def patient(ctx: dt.TaskContext, x: int) -> int:
        handle = await ctx.spawn("kid", shaky, x, ONCE)
        await ctx.sleep_for("first", 100)  # the child fails meanwhile
        return int(await ctx.join("kid", handle))

    client.register(shaky, patient)
    spawned = await client.spawn(patient, 7)
    await run_until_idle(client)
    (child,) = (await client.list_tasks(parent=spawned.task_id)).items
    assert child.state is dt.TaskState.FAILED
    broken[0] = False
    await client.retry(child.task_id)
    await advance_clock(client, 101)
    await run_until_idle(client)
    # The failure it no longer has is not what the parent's join sees.
    info = await client.get_task(spawned.task_id)
    assert info.waiting_for == dt.WaitingForChild(child.task_id, "$join:kid")
    await advance_clock(client, 1001)
    await run_until_idle(client)
    assert await client.wait_result(patient, spawned.task_id, timeout=10) == 7


async def summary(client: dt.Durable, task_id: UUID) -> dt.TaskSummary:
    (found,) = [t for t in (await client.list_tasks()).items if t.task_id == task_id]
    return found


async def test_a_retried_task_gets_its_max_duration_again(client: dt.Durable) -> None:
    calls: list[str] = []
    broken = [True]
    fragile = make_fragile(calls, broken)
    client.register(fragile)
    policy = dt.CancellationPolicy(max_duration=60)
    options = dt.SpawnOptions(max_attempts=1, cancellation=policy)
    spawned = await client.spawn(fragile, 2, options=options)
    await run_until_idle(client)
    await advance_clock(client, 600)  # long past the first start's max_duration
    broken[0] = False
    await client.retry(spawned.task_id)
    await run_until_idle(client)
    assert await client.wait_result(fragile, spawned.task_id, timeout=10) == 21
