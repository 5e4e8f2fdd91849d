"""Every awaitable of TaskContext is a trio checkpoint, replays included: a long replay
honours cancellation and lets the worker's heartbeat renew the lease meanwhile."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
import trio.testing

import durable_trio as dt
from durable_trio._core.ids import uuid7
from durable_trio.testing import advance_clock, run_until_idle
from support import query

STEPS = 10_000
CANCEL_AFTER = 2_000
REPLAYED: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    REPLAYED.clear()
    REPLAYED["steps"] = 0


def unreachable() -> int:
    raise AssertionError("every step is stored: none may run")


def busy(seconds: float) -> None:
    """Work between steps that never yields to trio (as CPU-bound task code would)."""
    time.sleep(seconds)


@dt.task("long_replay")
async def long_replay(ctx: dt.TaskContext, p: None) -> None:
    for i in range(STEPS):
        REPLAYED["steps"] += 1
        busy(0.0005)
        await ctx.step(f"s{i}", unreachable)
    await ctx.await_event("never")


async def test_a_long_replay_can_be_cancelled_and_keeps_its_lease(client: dt.Durable) -> None:
    client.register(long_replay)
    spawned = await client.spawn(long_replay, None)
    task_id = spawned.task_id
    # Stored by "earlier attempts": the first claim replays 10,000 steps.
    await query(
        client,
        "INSERT INTO {schema}.checkpoints (task_id, name, value, run_id, created_at) "
        "SELECT %s, 's' || g, '1', %s, now() FROM generate_series(0, %s) g",
        task_id,
        uuid7(),
        STEPS - 1,
    )
    worker = client.new_worker(dt.WorkerOptions(claim_timeout=0.6, poll_interval=0.05))
    leases: set[Any] = set()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            # Watch the lease while the replay runs; this loop only gets a turn if the
            # replay yields.
            while REPLAYED["steps"] < CANCEL_AFTER:
                rows = await query(
                    client,
                    "SELECT lease_expires_at FROM {schema}.runs "
                    "WHERE task_id = %s AND state = 'running'",
                    task_id,
                )
                leases.update(row["lease_expires_at"] for row in rows)
                await trio.sleep(0.01)
            cancelled_at = REPLAYED["steps"]
            assert await client.cancel(task_id)
            while worker.in_flight or worker.claiming:
                await trio.sleep(0.01)
            worker.shutdown()

    assert cancelled_at < STEPS  # the test got a turn in the middle of the replay
    assert REPLAYED["steps"] < STEPS // 2  # and the replay stopped soon after the cancel
    assert len(leases) >= 3  # claimed, then renewed by heartbeats during the replay
    assert (await client.get_task(task_id)).state == "cancelled"


@dt.task("kid")
async def kid(ctx: dt.TaskContext, p: int) -> int:
    return p + 1


@dt.task("yields_everywhere")
async def yields_everywhere(ctx: dt.TaskContext, p: None) -> int:
    """Each call is checked, in the first run and in both replays, to be a checkpoint."""
    passes = REPLAYED["steps"] = REPLAYED["steps"] + 1
    with trio.testing.assert_checkpoints():
        await ctx.now()
    with trio.testing.assert_checkpoints():
        await ctx.random()
    with trio.testing.assert_checkpoints():
        await ctx.uuid7()
    with trio.testing.assert_checkpoints():
        await ctx.step("sync", lambda: 1, result_type=int)
    with trio.testing.assert_checkpoints():
        handle = await ctx.spawn("kid", kid, 1)
    with trio.testing.assert_checkpoints():
        await ctx.emit_event("hello")
    with trio.testing.assert_checkpoints():
        await ctx.patched("some-change")
    with trio.testing.assert_checkpoints():
        await ctx.sleep_for("zero", 0)
    await ctx.sleep_for("nap", 10)
    with trio.testing.assert_checkpoints():
        joined: int = await ctx.join("kid", handle)
    with trio.testing.assert_checkpoints():
        await ctx.await_event("hello")
    await ctx.sleep_for("nap-2", 10)
    return passes + joined


async def test_every_context_awaitable_is_a_checkpoint_in_replays_too(
    client: dt.Durable,
) -> None:
    client.register(yields_everywhere, kid)
    spawned = await client.spawn(yields_everywhere, None)
    for _ in range(3):
        await run_until_idle(client)
        await advance_clock(client, 11)
    # Three passes: the first run, then two replays; any failed check fails the task.
    assert await client.wait_result(yields_everywhere, spawned.task_id, timeout=10) == 3 + 2
