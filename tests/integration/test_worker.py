"""The worker: concurrency limit, graceful shutdown, unknown tasks, claim order."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import trio

import durable_trio as dt
from durable_trio.testing import advance_clock, database_now, run_until_idle
from support import query

# Shared with the task bodies; reset for every test.
STATE: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    STATE.clear()


async def run_states(client: dt.Durable) -> dict[str, int]:
    rows = await query(
        client, "SELECT state, count(*) AS n FROM {schema}.runs GROUP BY state ORDER BY state"
    )
    return {r["state"]: r["n"] for r in rows}


# -- concurrency ------------------------------------------------------------------------


async def blocked_step(i: int) -> int:
    STATE["running"] += 1
    STATE["max"] = max(STATE["max"], STATE["running"])
    if STATE["running"] == 3:
        STATE["three running"].set()
    try:
        await STATE["gate"].wait()
    finally:
        STATE["running"] -= 1
    return i


@dt.task("blocker")
async def blocker(ctx: dt.TaskContext, i: int) -> int:
    return await ctx.step("block", blocked_step, i)


async def test_concurrency_limit_is_respected(client: dt.Durable) -> None:
    client.register(blocker)
    STATE.update(running=0, max=0, gate=trio.Event(), **{"three running": trio.Event()})
    spawned = await client.spawn_many(blocker, range(10))
    worker = client.new_worker(dt.WorkerOptions(concurrency=3, poll_interval=0.05))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await STATE["three running"].wait()
            # Give the claim loop every chance to (wrongly) claim more.
            for _ in range(20):
                await trio.lowlevel.checkpoint()
            assert worker.in_flight == 3
            assert await run_states(client) == {"running": 3, "pending": 7}
            tasks = await query(
                client, "SELECT state, count(*) AS n FROM {schema}.tasks GROUP BY state"
            )
            assert {r["state"]: r["n"] for r in tasks} == {"running": 3, "pending": 7}
            STATE["gate"].set()
            results = [await client.wait_result(blocker, s.task_id, timeout=10) for s in spawned]
            worker.shutdown()
    assert results == list(range(10))
    assert STATE["max"] == 3
    assert STATE["running"] == 0
    assert await run_states(client) == {"completed": 10}


async def test_concurrency_one_runs_one_at_a_time(client: dt.Durable) -> None:
    client.register(blocker)
    STATE.update(running=0, max=0, gate=trio.Event(), **{"three running": trio.Event()})
    STATE["gate"].set()
    await client.spawn_many(blocker, range(5))
    assert await run_until_idle(client, dt.WorkerOptions(concurrency=1, poll_interval=0.05)) == 5
    assert STATE["max"] == 1


# -- graceful shutdown ------------------------------------------------------------------


async def held_step(i: int) -> int:
    STATE.setdefault("entered", 0)
    STATE["entered"] += 1
    if STATE["entered"] == STATE["expected"]:
        STATE["all in"].set()
    if not STATE["open"]:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            STATE["cancelled"] = STATE.get("cancelled", 0) + 1
            raise
    return i


@dt.task("held", options=dt.SpawnOptions(max_attempts=3))
async def held(ctx: dt.TaskContext, i: int) -> dict[str, int]:
    value = await ctx.step("hold", held_step, i)
    return {"value": value, "attempt": ctx.attempt}


async def test_graceful_shutdown_releases_leases(client: dt.Durable) -> None:
    client.register(held)
    STATE.update(expected=4, open=False, **{"all in": trio.Event()})
    spawned = await client.spawn_many(held, range(4))
    worker = client.new_worker(
        dt.WorkerOptions(concurrency=8, shutdown_grace=0, poll_interval=0.05, worker_id="leaver")
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await STATE["all in"].wait()
            assert await run_states(client) == {"running": 4}
            worker.shutdown()
        # worker.run returned by itself: the nursery closed without being cancelled.
        assert not nursery.cancel_scope.cancelled_caught
    assert STATE["cancelled"] == 4
    assert worker.in_flight == 0

    runs = await query(
        client,
        "SELECT attempt, state, worker_id, lease_expires_at, wake_reason, error,"
        " available_at <= {schema}.clock_now() AS due FROM {schema}.runs",
    )
    assert len(runs) == 4
    for run in runs:
        assert run["attempt"] == 1
        assert run["state"] == "pending"
        assert run["worker_id"] is None
        assert run["lease_expires_at"] is None
        assert run["wake_reason"] == "released"
        assert run["error"] is None
        assert run["due"] is True
    for s in spawned:
        info = await client.get_task(s.task_id)
        assert info.state is dt.TaskState.PENDING
        assert info.attempts == 1
        assert info.error is None

    # Claimable at once by another worker (no lease to wait out), still attempt 1.
    STATE["open"] = True
    STATE["all in"] = trio.Event()
    STATE["entered"] = 0
    assert await run_until_idle(client) == 4
    for i, s in enumerate(spawned):
        assert await client.wait_result(held, s.task_id, timeout=10) == {"value": i, "attempt": 1}
        assert (await client.get_task(s.task_id)).attempts == 1
    assert await run_states(client) == {"completed": 4}


async def gated_step(i: int) -> int:
    STATE["entered"] += 1
    if STATE["entered"] == 2:
        STATE["all in"].set()
    try:
        await STATE["gate"].wait()
    except trio.Cancelled:
        STATE["cancelled"] = True
        raise
    return i


@dt.task("gated")
async def gated(ctx: dt.TaskContext, i: int) -> int:
    return await ctx.step("gate", gated_step, i)


async def test_shutdown_grace_lets_runs_finish(client: dt.Durable) -> None:
    client.register(gated)
    STATE.update(entered=0, gate=trio.Event(), **{"all in": trio.Event()})
    spawned = await client.spawn_many(gated, range(2))
    late = await client.spawn(gated, 99, options=dt.SpawnOptions(delay=10))
    worker = client.new_worker(
        dt.WorkerOptions(concurrency=8, shutdown_grace=60, poll_interval=0.05)
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await STATE["all in"].wait()
            worker.shutdown()
            # Claiming has stopped: a run that becomes due now is left alone. (Less
            # than the 30 s lease, so the in-flight runs keep theirs.)
            await advance_clock(client, 20)
            # In-flight runs may still finish within the grace period.
            STATE["gate"].set()
    assert "cancelled" not in STATE
    for i, s in enumerate(spawned):
        assert await client.wait_result(gated, s.task_id, timeout=10) == i
        assert (await client.get_task(s.task_id)).attempts == 1
    info = await client.get_task(late.task_id)
    assert info.state is dt.TaskState.PENDING
    assert worker.claimed_total == 2


# -- a worker without the code ------------------------------------------------------------


@dt.task("known")
async def known(ctx: dt.TaskContext, params: Any) -> str:
    return "known ran"


async def test_worker_without_the_code_leaves_the_task_alone(client: dt.Durable) -> None:
    client.register(known)
    unknown = await client.spawn_by_name("unknown_task", {"x": 1})
    mine = await client.spawn(known, None)
    assert await run_until_idle(client) == 1
    assert await client.wait_result(known, mine.task_id, timeout=10) == "known ran"

    info = await client.get_task(unknown.task_id)
    assert info.state is dt.TaskState.PENDING
    assert info.attempts == 1
    assert info.error is None
    assert info.first_started_at is None
    (run,) = await query(
        client,
        "SELECT state, attempt, worker_id FROM {schema}.runs WHERE task_id = %s",
        unknown.task_id,
    )
    assert run == {"state": "pending", "attempt": 1, "worker_id": None}

    # Still pending after time passes and more workers come and go.
    await advance_clock(client, 3600)
    assert await run_until_idle(client) == 0
    info = await client.get_task(unknown.task_id)
    assert info.state is dt.TaskState.PENDING
    assert info.attempts == 1


async def test_unknown_task_is_run_by_a_worker_that_has_it(client: dt.Durable, pg_url: str) -> None:
    client.register(known)
    spawned = await client.spawn_by_name("unknown_task", {"x": 1})
    assert await run_until_idle(client) == 0

    @dt.task("unknown_task")
    async def unknown_task(ctx: dt.TaskContext, params: dict[str, int]) -> int:
        return params["x"] + 1

    async with dt.Durable.connect(pg_url, schema=client.schema) as other:
        other.register(unknown_task)
        assert await run_until_idle(other) == 1
    assert await client.wait_result(None, spawned.task_id, timeout=10) == 2


async def test_worker_with_no_tasks_claims_nothing(client: dt.Durable) -> None:
    await client.spawn_by_name("anything", {})
    assert await run_until_idle(client) == 0
    assert await run_states(client) == {"pending": 1}


# -- claim order: priority and delayed start -----------------------------------------------


@dt.task("record")
async def record(ctx: dt.TaskContext, label: str) -> str:
    STATE.setdefault("order", []).append(label)
    return label


async def test_higher_priority_is_claimed_first(client: dt.Durable) -> None:
    client.register(record)
    # Spawned lowest first, so creation order alone would give the opposite answer.
    for label, priority in [("low", -5), ("zero", 0), ("mid", 5), ("high", 10), ("zero2", 0)]:
        await client.spawn(record, label, options=dt.SpawnOptions(priority=priority))
    assert await run_until_idle(client, dt.WorkerOptions(concurrency=1, poll_interval=0.05)) == 5
    assert STATE["order"] == ["high", "mid", "zero", "zero2", "low"]


async def test_delayed_start_waits_for_the_clock(client: dt.Durable) -> None:
    client.register(record)
    later = await client.spawn(record, "later", options=dt.SpawnOptions(delay=60))
    now = await client.spawn(record, "now")
    assert await run_until_idle(client) == 1
    assert STATE["order"] == ["now"]
    assert (await client.get_task(later.task_id)).state is dt.TaskState.PENDING
    await advance_clock(client, 30)
    assert await run_until_idle(client) == 0
    await advance_clock(client, 31)
    assert await run_until_idle(client) == 1
    assert STATE["order"] == ["now", "later"]
    assert await client.wait_result(record, later.task_id, timeout=10) == "later"
    assert await client.wait_result(record, now.task_id, timeout=10) == "now"


async def test_start_at_and_priority_combined(client: dt.Durable) -> None:
    client.register(record)
    start = await database_now(client)
    await client.spawn(record, "urgent-later", options=dt.SpawnOptions(priority=100, delay=30))
    await client.spawn(
        record,
        "at",
        options=dt.SpawnOptions(start_at=start + timedelta(seconds=10)),
    )
    await client.spawn(record, "plain")
    opts = dt.WorkerOptions(concurrency=1, poll_interval=0.05)
    assert await run_until_idle(client, opts) == 1
    await advance_clock(client, 11)
    assert await run_until_idle(client, opts) == 1
    await advance_clock(client, 20)
    assert await run_until_idle(client, opts) == 1
    assert STATE["order"] == ["plain", "at", "urgent-later"]


@dt.task("quick")
async def quick(ctx: dt.TaskContext, n: int) -> int:
    return await ctx.step("double", lambda: 2 * n)


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_worker_keeps_claiming_from_every_queue_without_polling(
    client: dt.Durable, concurrency: int
) -> None:
    # Work only in the second queue, polling every 10 minutes: each finished run must
    # wake the claim loop (the writer's own claims look at the first queue only).
    client.register(quick)
    options = dt.SpawnOptions(queue="second")
    spawned = await client.spawn_many(quick, range(20), options=options)
    worker_options = dt.WorkerOptions(
        concurrency=concurrency, queues=["first", "second"], poll_interval=600
    )
    async with client.worker(worker_options):
        with trio.fail_after(30):  # a safety net far below the poll interval
            results = [await client.wait_result(quick, s.task_id) for s in spawned]
    assert results == [2 * n for n in range(20)]


ORDER: list[str] = []


@dt.task("noted")
async def noted(ctx: dt.TaskContext, label: str) -> None:
    ORDER.append(label)


async def test_a_busy_first_queue_does_not_starve_the_next(client: dt.Durable) -> None:
    # Each claim starts one queue further along, the writer's claims included.
    ORDER.clear()
    client.register(noted)
    await client.spawn_many(
        noted, [f"first-{i}" for i in range(30)], options=dt.SpawnOptions(queue="first")
    )
    await client.spawn(noted, "second", options=dt.SpawnOptions(queue="second"))
    options = dt.WorkerOptions(concurrency=1, queues=["first", "second"], poll_interval=0.05)
    await run_until_idle(client, options)
    assert len(ORDER) == 31
    assert ORDER.index("second") < 3, ORDER


async def test_a_worker_runs_once(client: dt.Durable) -> None:
    """Run again after it stopped, a worker would claim nothing (it is stopping for
    good): it says so instead."""
    client.register(quick)
    worker = client.new_worker(dt.WorkerOptions(poll_interval=0.05))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        worker.shutdown()
    with pytest.raises(dt.ConfigurationError, match="runs once"):
        await worker.run()
