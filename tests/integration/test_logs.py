"""Structured logs: one logger hierarchy, INFO when a worker starts and stops, DEBUG per
claim and completion, and every record about a run carrying its fields."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import trio

import durable_trio as dt
from durable_trio.testing import advance_clock, reap_expired, run_until_idle

FIELDS = ("task_id", "run_id", "task_name", "queue", "attempt", "step")


@dt.task("fine")
async def fine(ctx: dt.TaskContext, p: None) -> int:
    return 1


@dt.task("broken")
async def broken(ctx: dt.TaskContext, p: None) -> None:
    raise ValueError("bad input")


async def test_run_records_carry_the_run_fields(
    client: dt.Durable, caplog: pytest.LogCaptureFixture
) -> None:
    client.register(fine, broken)
    ok = await client.spawn(fine, None)
    bad = await client.spawn(broken, None, options=dt.SpawnOptions(max_attempts=2))
    with caplog.at_level(logging.DEBUG, logger="durable_trio"):
        async with client.worker(dt.WorkerOptions(worker_id="logs-w", poll_interval=0.05)):
            await client.wait_result(ok)
            with pytest.raises(dt.TaskFailed):
                await client.wait_result(bad, timeout=30)
    messages = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert (
        "durable_trio.worker",
        "INFO",
        "worker logs-w started: queues default, tasks broken, fine, concurrency 8",
    ) in messages
    assert ("durable_trio.worker", "INFO", "worker logs-w stopped") in messages
    about_runs = [r for r in caplog.records if getattr(r, "run_id", None)]
    assert {r.levelname for r in about_runs} >= {"DEBUG", "WARNING", "ERROR"}
    for record in about_runs:
        for field in FIELDS:
            assert hasattr(record, field), (record.getMessage(), field)
    failures = [r for r in about_runs if r.levelno >= logging.WARNING]
    assert [(r.task_name, r.attempt) for r in failures] == [("broken", 1), ("broken", 2)]  # type: ignore[attr-defined]
    assert all(r.task_id == str(bad.task_id) for r in failures)  # type: ignore[attr-defined]
    completed = [r for r in about_runs if r.getMessage().startswith("completed task 'fine'")]
    assert [r.task_id for r in completed] == [str(ok.task_id)]  # type: ignore[attr-defined]


async def test_one_logger_hierarchy(client: dt.Durable) -> None:
    names = {"durable_trio.worker", "durable_trio.schedules", "durable_trio.sql"}
    assert names <= set(logging.Logger.manager.loggerDict)
    await run_until_idle(client)


@dt.task("fails_in_a_step")
async def fails_in_a_step(ctx: dt.TaskContext, p: None) -> None:
    await ctx.step("fine", lambda: 1, result_type=int)
    await ctx.step("explode", _explode)


def _explode() -> None:
    raise ValueError("boom")


async def test_a_failure_raised_in_a_step_names_the_step(
    client: dt.Durable, caplog: pytest.LogCaptureFixture
) -> None:
    client.register(fails_in_a_step, broken)
    options = dt.SpawnOptions(max_attempts=1)
    in_step = await client.spawn(fails_in_a_step, None, options=options)
    outside = await client.spawn(broken, None, options=options)
    with caplog.at_level(logging.WARNING, logger="durable_trio"):
        await run_until_idle(client)
    steps = {r.task_id: r.step for r in caplog.records if r.levelname == "ERROR"}  # type: ignore[attr-defined]
    assert steps == {str(in_step.task_id): "explode", str(outside.task_id): None}


@dt.task("stuck")
async def stuck(ctx: dt.TaskContext, p: None) -> None:
    await ctx.step("first", lambda: 1, result_type=int)
    await trio.sleep_forever()


async def test_a_task_its_worker_left_is_logged_when_its_lease_expires(
    client: dt.Durable, caplog: pytest.LogCaptureFixture
) -> None:
    """The reaper retries (WARNING) or fails for good (ERROR) a run whose worker vanished,
    with the run's fields, as a worker logs a failed attempt."""
    client.register(stuck)
    retried = await client.spawn(stuck, None, options=dt.SpawnOptions(max_attempts=2))
    failed = await client.spawn(stuck, None, options=dt.SpawnOptions(max_attempts=1))
    worker = client.new_worker(dt.WorkerOptions(claim_timeout=60))
    worker.hand_back_on_cancel = False  # plays a process that died: nothing handed back
    with trio.move_on_after(1):
        await worker.run_once()
    await advance_clock(client, timedelta(minutes=5))
    with caplog.at_level(logging.WARNING, logger="durable_trio"):
        assert await reap_expired(client) == 2
    records = {r.task_id: r for r in caplog.records if getattr(r, "task_id", None)}  # type: ignore[attr-defined]
    assert set(records) == {str(retried.task_id), str(failed.task_id)}
    assert records[str(retried.task_id)].levelname == "WARNING"
    assert records[str(failed.task_id)].levelname == "ERROR"
    for record in records.values():
        assert {f: getattr(record, f) for f in ("task_name", "queue", "attempt", "step")} == {
            "task_name": "stuck",
            "queue": "default",
            "attempt": 1,
            "step": None,
        }
        assert "lease expired" in record.getMessage()
