"""Errors users meet: the same mistake raises the same type from the client and from a
task's context; a failed task's error is a typed value; a task failed by a replay
mismatch resumes with `retry` once the code takes the old path again."""

from __future__ import annotations

from typing import Any

import pytest

import durable_trio as dt
from durable_trio.testing import run_until_idle

DEPLOYED = {"step": "charge"}
CHARGED: list[str] = []


@dt.task("spawns-a-non-task")
async def spawns_a_non_task(ctx: dt.TaskContext, p: None) -> None:
    await ctx.spawn("child", object(), None)  # type: ignore[call-overload]


async def test_spawning_a_non_task_is_invalid_input_everywhere(client: dt.Durable) -> None:
    with pytest.raises(dt.InvalidInput, match=r"expected a @durable_trio\.task"):
        await client.spawn(object(), None)  # type: ignore[call-overload]
    client.register(spawns_a_non_task)
    spawned = await client.spawn(spawns_a_non_task, None)
    await run_until_idle(client)
    with pytest.raises(dt.TaskFailed) as caught:
        await client.wait_result(spawned)
    assert caught.value.error.type == "durable_trio._errors.InvalidInput"


@dt.task("fails-typed", options=dt.SpawnOptions(max_attempts=1))
async def fails_typed(ctx: dt.TaskContext, p: None) -> None:
    raise KeyError("missing")


async def test_a_failed_tasks_error_is_typed(client: dt.Durable) -> None:
    client.register(fails_typed)
    spawned = await client.spawn(fails_typed, None)
    await run_until_idle(client)
    with pytest.raises(dt.TaskFailed) as caught:
        await client.wait_result(spawned)
    error = caught.value.error
    assert isinstance(error, dt.TaskError)
    assert (error.type, error.message, error.attempt, error.retryable) == (
        "builtins.KeyError",
        "'missing'",
        1,
        True,
    )
    assert error.traceback is not None
    assert "raise KeyError" in error.traceback
    assert error["type"] == error.type  # the stored JSON reads as before
    assert str(caught.value).endswith("builtins.KeyError: 'missing'")


def charge() -> str:
    CHARGED.append("card")
    return "charged"


@dt.task("checkout-again")
async def checkout_again(ctx: dt.TaskContext, p: None) -> Any:
    await ctx.step(DEPLOYED["step"], charge)
    return await ctx.await_event("shipped")


async def test_a_replay_mismatch_resumes_with_retry_once_fixed(client: dt.Durable) -> None:
    DEPLOYED["step"] = "charge"
    CHARGED.clear()
    client.register(checkout_again)
    spawned = await client.spawn(checkout_again, None)
    await run_until_idle(client)
    DEPLOYED["step"] = "charge-card"  # the rename that breaks replays
    await client.emit_event("shipped", "box 7")
    await run_until_idle(client)
    with pytest.raises(dt.TaskFailed) as caught:
        await client.wait_result(spawned)
    assert caught.value.error.type == "durable_trio._errors.ReplayMismatch"
    DEPLOYED["step"] = "charge"  # the fix: the old name again
    await client.retry(spawned.task_id)
    await run_until_idle(client)
    assert await client.wait_result(spawned) == "box 7"
    assert CHARGED == ["card"]  # charged once, across the mismatch and the retry
