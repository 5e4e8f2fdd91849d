"""Code inside a task that runs concurrently (a nursery): names must stay replayable,
errors raised in the nursery keep their meaning, children of every kind can be spawned."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import durable_trio as dt
from durable_trio.testing import advance_clock, run_until_idle


@dt.task("same_name_in_nursery", options=dt.SpawnOptions(max_attempts=3))
async def same_name_in_nursery(ctx: dt.TaskContext, p: None) -> list[str]:
    got: list[str] = []

    async def fetch(label: str) -> None:
        got.append(await ctx.step("fetch", lambda: label))

    async with trio.open_nursery() as nursery:
        for label in ("a", "b"):
            nursery.start_soon(fetch, label)
    return got


@dt.task("distinct_names_in_nursery")
async def distinct_names_in_nursery(ctx: dt.TaskContext, p: None) -> dict[str, str]:
    got: dict[str, str] = {}

    async def fetch(label: str) -> None:
        got[label] = await ctx.step(f"fetch-{label}", lambda: label.upper())

    await ctx.step("before", lambda: 1)
    async with trio.open_nursery() as nursery:
        for label in ("a", "b", "c"):
            nursery.start_soon(fetch, label)
    await ctx.sleep_for("nap", 10)  # a replay runs the nursery again from checkpoints
    await ctx.step("before", lambda: 2)  # one trio task reusing a name: fine
    return got


async def test_one_name_used_by_two_trio_tasks_is_refused(client: dt.Durable) -> None:
    # Repeats are numbered in call order, which trio does not fix between the tasks of a
    # nursery (even when, as here, each step finishes before the next task starts): a
    # replay could hand each one the other's value.
    client.register(same_name_in_nursery)
    spawned = await client.spawn(same_name_in_nursery, None)
    await run_until_idle(client)
    with pytest.raises(dt.TaskFailed) as caught:
        await client.wait_result(same_name_in_nursery, spawned.task_id, timeout=10)
    assert "'fetch' was already used by another trio task of this run" in str(caught.value)
    assert (await client.get_task(spawned.task_id)).attempts == 1  # misuse: not retried


async def test_distinct_names_in_a_nursery_replay_exactly(client: dt.Durable) -> None:
    client.register(distinct_names_in_nursery)
    spawned = await client.spawn(distinct_names_in_nursery, None)
    await run_until_idle(client)
    await advance_clock(client, 11)
    await run_until_idle(client)
    result = await client.wait_result(distinct_names_in_nursery, spawned.task_id, timeout=10)
    assert result == {"a": "A", "b": "B", "c": "C"}


@dt.task("gives_up_in_nursery", options=dt.SpawnOptions(max_attempts=3))
async def gives_up_in_nursery(ctx: dt.TaskContext, p: None) -> None:
    async def doomed() -> None:
        raise dt.NonRetryable("no point retrying")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(doomed)


@dt.task(
    "declared_final_in_nursery",
    options=dt.SpawnOptions(max_attempts=3),
    non_retryable=(KeyError,),
)
async def declared_final_in_nursery(ctx: dt.TaskContext, p: None) -> None:
    async def lookup() -> None:
        raise KeyError("missing")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lookup)


@pytest.mark.parametrize("task", [gives_up_in_nursery, declared_final_in_nursery])
async def test_a_non_retryable_error_inside_a_nursery_is_not_retried(
    client: dt.Durable, task: Any
) -> None:
    client.register(task)
    spawned = await client.spawn(task, None)
    await run_until_idle(client)
    await advance_clock(client, 3600)  # past any backoff
    await run_until_idle(client)
    with pytest.raises(dt.TaskFailed) as caught:
        await client.wait_result(task, spawned.task_id, timeout=10)
    assert caught.value.error["retryable"] is False
    assert (await client.get_task(spawned.task_id)).attempts == 1


class Tripler(dt.Task[int, int]):
    name = "tripler"

    async def run(self, params: int, ctx: dt.TaskContext) -> int:
        return 3 * params


@dt.task("spawns_a_task_class")
async def spawns_a_task_class(ctx: dt.TaskContext, p: int) -> int:
    handle = await ctx.spawn("kid", Tripler, p)
    result: int = await ctx.join("kid", handle)
    return result


async def test_ctx_spawn_takes_a_task_subclass(client: dt.Durable) -> None:
    client.register(spawns_a_task_class, Tripler)
    spawned = await client.spawn(spawns_a_task_class, 7)
    await run_until_idle(client)
    await run_until_idle(client)
    assert await client.wait_result(spawns_a_task_class, spawned.task_id, timeout=10) == 21
