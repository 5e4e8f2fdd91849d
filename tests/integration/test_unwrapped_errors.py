"""Errors leave `Durable.connect` and `client.worker()` as they were raised: a plain
``except`` catches them, never an ExceptionGroup. A crash of the worker itself is
`WorkerFailed`, with the worker's error as its cause."""

from __future__ import annotations

from typing import NoReturn

import pytest
import trio

import durable_trio as dt
from durable_trio._worker import Worker


@dt.task("never-ends")
async def never_ends(ctx: dt.TaskContext, p: None) -> None:
    await ctx.await_event("never")


@dt.task("gives-up")
async def gives_up(ctx: dt.TaskContext, p: None) -> None:
    raise dt.NonRetryable("out of stock")


async def test_wait_timeout_in_the_worker_block_is_caught_by_a_plain_except(
    client: dt.Durable,
) -> None:
    client.register(never_ends)
    spawned = await client.spawn(never_ends, None)
    caught: list[BaseException] = []
    try:
        async with client.worker(dt.WorkerOptions(poll_interval=0.05)):
            await client.wait_result(never_ends, spawned.task_id, timeout=0.05)
    except dt.WaitTimeout as ex:
        caught.append(ex)
    assert len(caught) == 1
    assert type(caught[0]) is dt.WaitTimeout


async def test_task_failed_leaves_connect_and_worker_bare(pg_url: str, schema: str) -> None:
    spawned: list[dt.SpawnResult] = []

    async def wait_for_a_failing_task() -> None:
        async with dt.Durable.connect(pg_url, schema=schema) as client:
            client.register(gives_up)
            spawned.append(await client.spawn(gives_up, None))
            async with client.worker(dt.WorkerOptions(poll_interval=0.05)):
                await client.wait_result(gives_up, spawned[0].task_id, timeout=30)

    with pytest.raises(dt.TaskFailed, match="out of stock") as raised:
        await wait_for_a_failing_task()
    assert type(raised.value) is dt.TaskFailed
    assert raised.value.task_id == spawned[0].task_id


async def test_the_blocks_own_error_keeps_its_context_and_its_groups(client: dt.Durable) -> None:
    async def raise_while_handling() -> None:
        async with client.worker():
            try:
                raise KeyError("order-1")
            except KeyError:
                raise ValueError("bad order")  # noqa: B904 - the implicit context is the point

    # An error raised while handling another keeps that one as its context.
    with pytest.raises(ValueError, match="bad order") as raised:
        await raise_while_handling()
    assert isinstance(raised.value.__context__, KeyError)

    # A group the block raises itself is the block's error: passed on as the same object.
    mine = ExceptionGroup("mine", [RuntimeError("a"), RuntimeError("b")])

    async def raise_a_group() -> None:
        async with client.worker():
            raise mine

    with pytest.raises(ExceptionGroup) as group:
        await raise_a_group()
    assert group.value is mine


async def test_leaving_the_block_by_an_outer_cancel_scope_is_quiet(client: dt.Durable) -> None:
    with trio.move_on_after(0.05) as scope:
        async with client.worker():
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_a_worker_crash_is_worker_failed_and_cancels_the_block(
    client: dt.Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_heartbeat(self: Worker) -> NoReturn:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("heartbeat bug")

    monkeypatch.setattr(Worker, "_heartbeat_loop", broken_heartbeat)
    reached: list[str] = []

    async def wait_forever() -> None:
        async with client.worker():
            await trio.sleep_forever()
        reached.append("after the block")  # never: the block was cancelled, then the error

    with pytest.raises(dt.WorkerFailed, match="heartbeat bug") as failed:
        await wait_forever()
    assert reached == []
    assert isinstance(failed.value, dt.DurableError)
    cause = failed.value.__cause__
    assert type(cause) is RuntimeError
    assert str(cause) == "heartbeat bug"
