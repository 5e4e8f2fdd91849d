"""`run ... abandoned: lease lost` is a warning operators act on: never logged for a run
that ended normally, always for a run really lost."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytest
import trio

import durable_trio as dt
from durable_trio._store import ClaimArgs
from durable_trio._writer import Write
from support import fetch


@dt.task("alarm-quick")
async def quick(ctx: dt.TaskContext, value: int) -> int:
    return value


@dt.task("alarm-fails")
async def fails(ctx: dt.TaskContext, _: None) -> None:
    raise ValueError("expected")


def warnings_about_losses(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "abandoned" in r.getMessage()
    ]


@pytest.mark.parametrize("concurrency", [1, 8])
async def test_a_heartbeat_answered_after_the_completion_is_no_alarm(
    client: dt.Durable, caplog: pytest.LogCaptureFixture, concurrency: int
) -> None:
    """The race made deterministic: every heartbeat is sent after a batch holding
    completions committed and answered before the runs hear of it, so the answer no
    longer lists runs the worker still holds."""
    caplog.set_level(logging.INFO, logger="durable_trio.worker")
    client.register(quick)
    worker = client.new_worker(dt.WorkerOptions(concurrency=concurrency, poll_interval=0.05))
    beats = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        writer: Any = worker._writer
        record = writer._record

        async def record_then_beat(writes: Sequence[Write], claim: ClaimArgs | None) -> Any:
            nonlocal beats
            answer = await record(writes, claim)
            if any(w.name is None for w in writes):
                beats += 1
                await worker._beat()
            return answer

        writer._record = record_then_beat
        spawned = await client.spawn_many(quick, list(range(20)))
        for n, task in enumerate(spawned):
            assert await client.wait_result(quick, task.task_id, timeout=10) == n
        worker.shutdown()
    assert beats > 0
    assert warnings_about_losses(caplog) == []
    states = await fetch(client, "SELECT DISTINCT state FROM @s.tasks")
    assert states == [{"state": "completed"}]


async def test_a_heartbeat_racing_a_failure_report_is_no_alarm(
    client: dt.Durable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durable_trio.worker")
    client.register(fails)
    worker = client.new_worker(dt.WorkerOptions(concurrency=4, poll_interval=0.05))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        store: Any = worker._exec
        fail = store.fail

        async def fail_then_beat(*args: Any, **kwargs: Any) -> Any:
            state = await fail(*args, **kwargs)
            await worker._beat()
            return state

        store.fail = fail_then_beat
        spawned = await client.spawn(fails, None, options=dt.SpawnOptions(max_attempts=1))
        with trio.fail_after(10):
            while (await client.get_task(spawned.task_id)).state is not dt.TaskState.FAILED:
                await trio.sleep(0.01)
            while worker.in_flight:
                await trio.sleep(0.01)
        worker.shutdown()
    assert warnings_about_losses(caplog) == []


STARTED = trio.Event()


@dt.task("alarm-blocks")
async def blocks(ctx: dt.TaskContext, _: None) -> None:
    STARTED.set()
    await trio.sleep_forever()


async def test_a_run_taken_over_is_still_reported_lost(
    client: dt.Durable, caplog: pytest.LogCaptureFixture
) -> None:
    STARTED.__init__()  # type: ignore[misc]
    caplog.set_level(logging.INFO, logger="durable_trio.worker")
    client.register(blocks)
    worker = client.new_worker(dt.WorkerOptions(concurrency=4, poll_interval=0.05))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await client.spawn(blocks, None)
        with trio.fail_after(10):
            await STARTED.wait()
        # Another worker holds the run now (its lease expired and it was claimed again).
        await fetch(client, "UPDATE @s.runs SET worker_id = 'another worker'")
        await worker._beat()
        with trio.fail_after(10):
            while worker.in_flight or not warnings_about_losses(caplog):
                await trio.sleep(0.01)
        worker.shutdown()
    assert [m.split(": ", 1)[1] for m in warnings_about_losses(caplog)] == [
        "lease lost (expired, or the run was taken over)"
    ]


@dt.task("alarm-sleeps")
async def sleeps(ctx: dt.TaskContext, _: None) -> str:
    await ctx.sleep_for("nap", 3600)
    return "woke"


async def test_a_heartbeat_racing_a_suspension_is_no_alarm(
    client: dt.Durable, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durable_trio.worker")
    client.register(sleeps)
    worker = client.new_worker(dt.WorkerOptions(concurrency=4, poll_interval=0.05))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        store: Any = worker._exec
        suspend = store.suspend

        async def suspend_then_beat(*args: Any, **kwargs: Any) -> Any:
            ok = await suspend(*args, **kwargs)
            await worker._beat()
            return ok

        store.suspend = suspend_then_beat
        spawned = await client.spawn(sleeps, None)
        with trio.fail_after(10):
            while (await client.get_task(spawned.task_id)).state is not dt.TaskState.SLEEPING:
                await trio.sleep(0.01)
            while worker.in_flight:
                await trio.sleep(0.01)
        worker.shutdown()
    assert warnings_about_losses(caplog) == []
