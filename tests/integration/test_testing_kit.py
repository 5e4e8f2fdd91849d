"""The testing kit: `run_once` steps a worker one deterministic pass at a time and says
what each run did; `run_until_idle(skip_time=True)` jumps the database clock to the next
due time, within its caps."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
import trio

import durable_trio as dt
from durable_trio.testing import (
    NeverIdle,
    RunOutcome,
    database_now,
    run_once,
    run_until_idle,
)
from support import fetch

ONCE = dt.SpawnOptions(max_attempts=1)
RETRY_IN_AN_HOUR = dt.SpawnOptions(max_attempts=2, retry=dt.RetryStrategy.fixed(3600))


@dt.task("kit-done")
async def done(ctx: dt.TaskContext, n: int) -> int:
    return await ctx.step("double", lambda: 2 * n, result_type=int)


@dt.task("kit-naps")
async def naps(ctx: dt.TaskContext, p: None) -> str:
    await ctx.sleep_for("nap", timedelta(days=1))
    return "rested"


@dt.task("kit-flaky")
async def flaky(ctx: dt.TaskContext, p: None) -> str:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return "second attempt"


@dt.task("kit-broken")
async def broken(ctx: dt.TaskContext, p: None) -> None:
    raise dt.NonRetryable("cannot ever work")


@dt.task("kit-child")
async def child(ctx: dt.TaskContext, n: int) -> int:
    return n + 1


@dt.task("kit-parent")
async def parent(ctx: dt.TaskContext, n: int) -> int:
    handle = await ctx.spawn("child", child, n)
    return int(await ctx.join("join", handle))


async def test_run_once_reports_what_each_claimed_run_did(client: dt.Durable) -> None:
    client.register(done, naps, flaky, broken)
    ids = {
        "done": (await client.spawn(done, 21)).task_id,
        "naps": (await client.spawn(naps, None)).task_id,
        "flaky": (await client.spawn(flaky, None, options=RETRY_IN_AN_HOUR)).task_id,
        "broken": (await client.spawn(broken, None, options=ONCE)).task_id,
    }
    report = await run_once(client)

    assert report.claimed == 4
    assert sorted(r.task_id for r in report.runs) == sorted(ids.values())
    assert report.completed == [ids["done"]]
    assert report.suspended == [ids["naps"]]
    assert report.retrying == [ids["flaky"]]
    assert report.failed == [ids["broken"]]
    assert report.cancelled == report.abandoned == []
    by_task = {r.task_id: r for r in report.runs}
    assert by_task[ids["done"]].outcome is RunOutcome.COMPLETED
    assert by_task[ids["done"]].error is None
    assert by_task[ids["flaky"]].error is not None
    assert by_task[ids["flaky"]].error["message"] == "first attempt fails"
    assert by_task[ids["broken"]].error is not None
    assert by_task[ids["broken"]].error["message"] == "cannot ever work"
    assert {r.task_name for r in report.runs} == {"kit-done", "kit-naps", "kit-flaky", "kit-broken"}
    assert all(r.attempt == 1 for r in report.runs)

    # The outcomes are written when run_once returns: no waiting, no polling.
    assert await client.wait_result(done, ids["done"], timeout=5) == 42
    assert (await client.get_task(ids["naps"])).state is dt.TaskState.SLEEPING
    assert (await client.get_task(ids["flaky"])).state is dt.TaskState.PENDING
    assert (await client.get_task(ids["broken"])).state is dt.TaskState.FAILED

    # Nothing else is due now: the sleeper and the retry are in the future.
    assert (await run_once(client)).runs == ()


async def test_run_once_steps_a_parent_and_its_child_one_pass_at_a_time(
    client: dt.Durable,
) -> None:
    client.register(parent, child)
    spawned = await client.spawn(parent, 1)

    first = await run_once(client)  # the parent spawns the child and joins it: suspended
    assert [(r.task_name, r.outcome) for r in first.runs] == [("kit-parent", RunOutcome.SUSPENDED)]
    second = await run_once(client)  # the child, spawned in the pass before, runs now
    assert [(r.task_name, r.outcome) for r in second.runs] == [("kit-child", RunOutcome.COMPLETED)]
    third = await run_once(client)  # the child's end woke the parent: it returns
    assert [(r.task_name, r.outcome, r.attempt) for r in third.runs] == [
        ("kit-parent", RunOutcome.COMPLETED, 1)
    ]
    assert third.runs[0].run_id == first.runs[0].run_id  # the same run, resumed
    assert (await run_once(client)).claimed == 0
    assert await client.wait_result(parent, spawned.task_id, timeout=5) == 2


async def test_run_once_claims_at_most_limit_runs_in_due_order(client: dt.Durable) -> None:
    client.register(done)
    spawned = [await client.spawn(done, n) for n in range(3)]
    report = await run_once(client, limit=2)
    assert [r.task_id for r in report.runs] == [s.task_id for s in spawned[:2]]
    assert [r.task_id for r in (await run_once(client, limit=2)).runs] == [spawned[2].task_id]
    with pytest.raises(dt.InvalidInput, match="limit must be a positive integer"):
        await run_once(client, limit=0)


async def test_run_once_refuses_a_running_worker(client: dt.Durable) -> None:
    client.register(done)
    async with client.worker() as worker:
        with pytest.raises(dt.ConfigurationError, match="run_once needs it idle"):
            await worker.run_once()


@dt.task("kit-journey")
async def journey(ctx: dt.TaskContext, p: None) -> str:
    await ctx.sleep_for("a-day", timedelta(days=1))
    await ctx.step("attempt", lambda: ctx.attempt, result_type=int)
    if ctx.attempt == 1:
        raise RuntimeError("retried after an hour")
    try:
        await ctx.await_event("approved", timeout=timedelta(days=7))
    except dt.EventTimeout:
        return "timed out after a week"
    return "approved"


async def test_skip_time_jumps_to_each_due_time_until_idle(client: dt.Durable) -> None:
    client.register(journey)
    spawned = await client.spawn(journey, None, options=RETRY_IN_AN_HOUR)
    before = await database_now(client)

    # Without skipping, the task sleeps into the future and stays asleep.
    assert await run_until_idle(client) == 1
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING

    # Skipping: a day asleep, an hour of backoff, a week waiting for the event.
    with trio.fail_after(30):
        claimed = await run_until_idle(client, skip_time=True)
    assert claimed == 3  # woken after a day (fails); the retry; woken by the timeout
    assert await client.wait_result(journey, spawned.task_id, timeout=5) == "timed out after a week"
    skipped = await database_now(client) - before
    assert timedelta(days=8, hours=1) <= skipped < timedelta(days=8, hours=1, minutes=1)


async def test_max_skip_leaves_later_work_asleep(client: dt.Durable) -> None:
    client.register(naps)
    spawned = await client.spawn(naps, None)
    before = await database_now(client)
    assert await run_until_idle(client, skip_time=True, max_skip=timedelta(hours=23)) == 1
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING
    assert await database_now(client) - before < timedelta(minutes=1)  # no jump at all

    assert await run_until_idle(client, skip_time=True, max_skip=timedelta(hours=25)) == 1
    assert await client.wait_result(naps, spawned.task_id, timeout=5) == "rested"


@dt.task("kit-ticker")
async def ticker(ctx: dt.TaskContext, p: None) -> None:
    for i in itertools.count():
        await ctx.sleep_for(f"tick-{i}", 60)


async def test_max_jumps_stops_a_task_that_sleeps_forever(client: dt.Durable) -> None:
    client.register(ticker)
    spawned = await client.spawn(ticker, None)
    with pytest.raises(NeverIdle, match="still not idle after 5 clock jumps"):
        await run_until_idle(client, skip_time=True, max_jumps=5)
    # The first sleep, then one more after each jump: every jump woke the task.
    ticks = await fetch(
        client, "SELECT name FROM @s.checkpoints WHERE task_id = %s", spawned.task_id
    )
    assert sorted(row["name"] for row in ticks) == [f"$sleep:tick-{i}" for i in range(6)]
    with pytest.raises(dt.InvalidInput, match="max_jumps"):
        await run_until_idle(client, skip_time=True, max_jumps=-1)


@dt.task("kit-blocks")
async def blocks(ctx: dt.TaskContext, p: None) -> None:
    await ctx.step("first", lambda: 1, result_type=int)
    await trio.sleep_forever()


async def test_a_cancelled_pass_hands_its_runs_back_or_plays_a_crash(
    client: dt.Durable,
) -> None:
    """Cancelled from outside, a pass hands its runs back (attempt unspent), as `run()`
    does; with ``hand_back_on_cancel = False`` it plays a crash: leases left to expire."""
    client.register(blocks)
    handed = await client.spawn(blocks, None)
    with trio.move_on_after(0.5):
        await run_once(client, dt.WorkerOptions(claim_timeout=60))
    runs = "SELECT state, attempt FROM @s.runs WHERE task_id = %s"
    assert await fetch(client, runs, handed.task_id) == [{"state": "pending", "attempt": 1}]
    await client.cancel(handed.task_id)
    crashed = await client.spawn(blocks, None)
    worker = client.new_worker(dt.WorkerOptions(claim_timeout=60))
    worker.hand_back_on_cancel = False
    with trio.move_on_after(0.5):
        await worker.run_once()
    assert await fetch(client, runs, crashed.task_id) == [{"state": "running", "attempt": 1}]
    assert (await run_once(client)).runs == ()  # still leased: nothing is due


async def test_a_pass_reports_a_run_whose_stored_data_cannot_be_read_as_failed(
    client: dt.Durable,
) -> None:
    client.register(done)
    spawned = await client.spawn(done, 1)
    await fetch(client, """UPDATE @s.tasks SET retry = '{"kind": "bogus"}'::jsonb RETURNING 1""")
    report = await run_once(client)
    assert report.failed == [spawned.task_id]
    assert report.runs[0].task_name == "kit-done"
    with pytest.raises(dt.TaskFailed, match="UnprocessableTask"):
        await client.wait_result(spawned, timeout=5)
