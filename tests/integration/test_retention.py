"""Retention: Durable.cleanup removes old finished work, in batches, and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

import durable_trio as dt
from durable_trio import _store
from durable_trio.testing import advance_clock, run_until_idle
from support import fetch


@dt.task("done")
async def done(ctx: dt.TaskContext, params: int) -> int:
    return await ctx.step("double", lambda: params * 2)


@dt.task("boom")
async def boom(ctx: dt.TaskContext, params: None) -> None:
    raise dt.NonRetryable("no")


@dt.task("kid")
async def kid(ctx: dt.TaskContext, params: int) -> int:
    return params


@dt.task("parent")
async def parent(ctx: dt.TaskContext, params: int) -> list[int]:
    handles = [await ctx.spawn(f"kid-{i}", kid, i) for i in range(params)]
    await ctx.await_event("join-now")
    return [await ctx.join(f"join-{i}", h) for i, h in enumerate(handles)]


async def count(client: dt.Durable, table: str) -> int:
    [row] = await fetch(client, f"SELECT count(*) AS n FROM @s.{table}")
    return int(row["n"])


async def test_old_finished_tasks_go_with_their_runs_and_checkpoints(
    client: dt.Durable,
) -> None:
    client.register(done)
    old = [(await client.spawn(done, i)).task_id for i in range(3)]
    await run_until_idle(client)
    await advance_clock(client, timedelta(days=31))
    recent = (await client.spawn(done, 9)).task_id
    await run_until_idle(client)
    pending = (await client.spawn(done, 7, options=dt.SpawnOptions(delay=3600))).task_id

    removed = await client.cleanup(finished_before=timedelta(days=30))
    assert removed == dt.CleanupResult(tasks=3, runs=3, checkpoints=3, events=0)
    for task_id in old:
        with pytest.raises(dt.TaskNotFound):
            await client.get_task(task_id)
    assert (await client.get_task(recent)).state is dt.TaskState.COMPLETED
    assert (await client.get_task(pending)).state is dt.TaskState.PENDING
    assert await count(client, "runs") == 2
    assert await count(client, "checkpoints") == 1
    # Nothing left that old: a second cleanup removes nothing.
    assert await client.cleanup(finished_before=timedelta(days=30)) == dt.CleanupResult()


async def test_batches_repeat_until_everything_old_is_gone(client: dt.Durable) -> None:
    client.register(done)
    await client.spawn_many(done, range(25))
    await run_until_idle(client)
    await advance_clock(client, 120)
    removed = await client.cleanup(finished_before=60, batch=4)
    assert (removed.tasks, removed.runs, removed.checkpoints) == (25, 25, 25)
    assert await count(client, "tasks") == 0


async def test_a_paced_cleanup_rests_between_batches_and_removes_the_same(
    client: dt.Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.register(done)
    await client.spawn_many(done, range(9))
    await run_until_idle(client)
    await advance_clock(client, 120)
    rests: list[float] = []
    real_sleep = trio.sleep

    async def sleep(seconds: float) -> None:
        rests.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(_store.trio, "sleep", sleep)
    removed = await client.cleanup(finished_before=60, batch=4, duty=0.25)
    assert (removed.tasks, removed.runs, removed.checkpoints) == (9, 9, 9)
    assert len(rests) == 2  # after each full batch; the last (1 task) ends the cleanup
    assert all(r > 0 for r in rests)
    assert await count(client, "tasks") == 0


async def test_the_walk_stops_at_the_cut_off(client: dt.Durable) -> None:
    client.register(done)
    spawned = await client.spawn(done, 1)
    await run_until_idle(client)
    # The task's id says when it was made (UUIDv7 milliseconds). Say it finished before
    # that, as if its id came from a clock running ahead: a cut-off between the two finds
    # its end old enough, yet the walk in id order stops before it.
    made = datetime.fromtimestamp((spawned.task_id.int >> 80) / 1000, UTC)
    await fetch(
        client,
        "UPDATE @s.tasks SET finished_at = %s WHERE task_id = %s",
        made - timedelta(hours=2),
        spawned.task_id,
    )
    assert await client.cleanup(finished_before=made - timedelta(hours=1)) == dt.CleanupResult()
    assert await client.cleanup(finished_before=datetime(1900, 1, 1, tzinfo=UTC)) == (
        dt.CleanupResult()
    )
    far = datetime(9999, 12, 31, tzinfo=UTC)  # the latest cut-off there is
    assert (await client.cleanup(finished_before=far)).tasks == 1


async def test_failed_and_cancelled_tasks_go_too(client: dt.Durable) -> None:
    client.register(done, boom)
    cancelled = await client.spawn(done, 1, options=dt.SpawnOptions(delay=3600))
    await client.cancel(cancelled.task_id)
    failed = await client.spawn(boom, None)
    await run_until_idle(client)
    assert (await client.get_task(failed.task_id)).state is dt.TaskState.FAILED
    await advance_clock(client, 10)
    removed = await client.cleanup(finished_before=datetime.now(UTC) + timedelta(days=1))
    assert removed.tasks == 2


async def test_children_of_an_unfinished_parent_stay_until_it_ends(client: dt.Durable) -> None:
    client.register(parent, kid)
    spawned = await client.spawn(parent, 2)
    await run_until_idle(client)  # the children finish; the parent waits for its event
    await advance_clock(client, timedelta(days=2))
    kept = await client.cleanup(finished_before=timedelta(days=1), events_before=timedelta(days=1))
    assert kept == dt.CleanupResult()  # the parent may join them yet: their ends are kept
    await client.emit_event("join-now")
    await run_until_idle(client)
    assert await client.wait_result(parent, spawned.task_id, timeout=10) == [0, 1]
    # The parent finished: its children's end events go at once, whatever their age.
    ended = await client.cleanup()
    assert ended == dt.CleanupResult(events=2)
    await advance_clock(client, timedelta(days=2))
    removed = await client.cleanup(finished_before=timedelta(days=1))
    assert removed.tasks == 3
    assert await count(client, "tasks") == 0


async def test_old_events_go_and_recent_ones_stay(client: dt.Durable) -> None:
    await client.emit_event("old", 1)
    await advance_clock(client, timedelta(hours=2))
    await client.emit_event("new", 2)
    removed = await client.cleanup(events_before=timedelta(hours=1))
    assert removed == dt.CleanupResult(events=1)
    rows = await fetch(client, "SELECT event_name FROM @s.events")
    assert [r["event_name"] for r in rows] == ["new"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"finished_before": datetime(2030, 1, 1)}, "timezone-aware datetime or an age"),
        ({"finished_before": -5}, "finished_before must be zero or more seconds"),
        ({"events_before": "yesterday"}, "events_before must be a timedelta"),
        ({"batch": 0}, "batch must be an integer from 1 to 100000"),
        ({"batch": True}, "batch must be an integer"),
        ({"duty": 0}, "duty must be a number above 0 and at most 1"),
        ({"duty": 1.5}, "duty must be a number above 0 and at most 1"),
        ({"duty": float("nan")}, "duty must be a number"),
        ({"duty": True}, "duty must be a number"),
    ],
)
async def test_bad_arguments_are_refused_and_remove_nothing(
    client: dt.Durable, kwargs: dict[str, Any], message: str
) -> None:
    client.register(done)
    await client.spawn(done, 1)
    await run_until_idle(client)
    with pytest.raises(dt.InvalidInput, match=message):
        await client.cleanup(**kwargs)
    assert await count(client, "tasks") == 1


async def test_workers_with_a_retention_clean_up_one_at_a_time(
    client: dt.Durable, pg_url: str
) -> None:
    import psycopg
    import trio

    client.register(done)
    old = await client.spawn(done, 1)
    await run_until_idle(client)
    await advance_clock(client, timedelta(days=2))
    options = dt.WorkerOptions(retention=timedelta(days=1), poll_interval=0.05)

    key = f"{client.schema}/retention"
    with psycopg.connect(pg_url, autocommit=True) as other:  # another worker's pass
        other.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
        async with client.worker(options):
            await trio.sleep(0.5)  # several passes: each finds the pass taken
            assert (await client.get_task(old.task_id)).state is dt.TaskState.COMPLETED
        other.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))

    async with client.worker(options):
        await _until_removed(client, old.task_id)


def test_a_retention_must_be_a_positive_duration() -> None:
    with pytest.raises(dt.InvalidInput, match="retention must be more than zero"):
        dt.WorkerOptions(retention=0)


async def test_a_long_retention_pass_delays_no_claim(client: dt.Durable, pg_url: str) -> None:
    """The retention pass runs beside the claim loop: while it is stuck (here on a lock a
    delete trigger waits for), new work is still claimed and finished."""
    import psycopg

    client.register(done)
    old = await client.spawn(done, 1)
    await run_until_idle(client)
    await advance_clock(client, timedelta(days=2))
    await fetch(
        client,
        "CREATE FUNCTION @s.stall() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN OLD; END $$",
    )
    await fetch(
        client,
        "CREATE TRIGGER stall BEFORE DELETE ON @s.tasks FOR EACH ROW EXECUTE FUNCTION @s.stall()",
    )
    options = dt.WorkerOptions(retention=timedelta(days=1), poll_interval=0.05)
    with psycopg.connect(pg_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(4242)")
        async with client.worker(options) as worker:
            with trio.fail_after(30):
                while not await _retention_waiting(client):
                    await trio.sleep(0.02)
            fresh = await client.spawn(done, 5)
            assert await client.wait_result(done, fresh.task_id, timeout=30) == 10
            assert worker.healthy
            assert (await client.get_task(old.task_id)).state is dt.TaskState.COMPLETED
            other.execute("SELECT pg_advisory_unlock(4242)")
            await _until_removed(client, old.task_id)


async def _until_removed(client: dt.Durable, task_id: Any) -> None:
    """Wait (30 s at most) until a retention pass has removed the task."""
    with trio.fail_after(30):
        while True:
            try:
                await client.get_task(task_id)
            except dt.TaskNotFound:
                return
            await trio.sleep(0.02)


async def _retention_waiting(client: dt.Durable) -> bool:
    rows = await fetch(
        client,
        "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND wait_event = 'advisory' AND position('cleanup' in query) > 0",
    )
    return bool(rows)
