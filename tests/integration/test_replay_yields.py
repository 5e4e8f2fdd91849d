"""Every awaitable of TaskContext is a trio checkpoint, replays included: a long replay
honours cancellation and lets the worker's heartbeat renew the lease meanwhile."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

import durable_trio as dt
from durable_trio._core.ids import uuid7
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
