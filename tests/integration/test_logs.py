"""Structured logs: one logger hierarchy, INFO when a worker starts and stops, DEBUG per
claim and completion, and every record about a run carrying its fields."""

from __future__ import annotations

import logging

import pytest

import durable_trio as dt
from durable_trio.testing import run_until_idle

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
