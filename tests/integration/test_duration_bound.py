"""Durations over MAX_DURATION in rows written around Python (plain SQL, an older version):
the worker clamps them to the bound instead of overflowing the clock arithmetic, and goes
on serving other tasks. (Python refuses such values where they enter: test_bad_input.)"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import durable_trio as dt
from durable_trio.testing import advance_clock, database_now, reap_expired, run_until_idle
from support import fetch

HUGE_RETRY = '{"kind": "fixed", "base": 1e13, "factor": 2, "max_delay": 1e13, "jitter": 0}'
HUGE_INTERVAL = "1000000000 days"  # ~2.7 million years: now + it overflows a timestamptz


@dt.task("fails-once")
async def fails_once(ctx: dt.TaskContext, p: Any) -> str:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return "done"


@dt.task("canary")
async def canary(ctx: dt.TaskContext, p: Any) -> str:
    return "alive"


@dt.task("beats")
async def beats(ctx: dt.TaskContext, p: Any) -> str:
    await ctx.heartbeat()
    return "beat"


async def canary_runs(client: dt.Durable) -> None:
    """A task spawned now is served: the worker did not die on the bad row."""
    spawned = await client.spawn(canary, None)
    await run_until_idle(client)
    assert await client.wait_result(canary, spawned.task_id, timeout=5) == "alive"


async def test_a_stored_retry_delay_over_the_bound_waits_the_bound(client: dt.Durable) -> None:
    # Unclamped, recording this retry overflowed (DatetimeFieldOverflow), left the task
    # running, and the reaping pass then crashed every worker of the schema.
    client.register(fails_once, canary)
    spawned = await client.spawn(fails_once, None)
    await fetch(client, "UPDATE @s.tasks SET retry = %s::jsonb", HUGE_RETRY)
    await run_until_idle(client)
    now = await database_now(client)
    info = await client.get_task(spawned.task_id)
    assert (info.state, info.attempts) == (dt.TaskState.PENDING, 2), info
    assert info.next_attempt_at is not None
    assert now < info.next_attempt_at <= now + dt.MAX_DURATION
    assert info.next_attempt_at > now + dt.MAX_DURATION - timedelta(minutes=1)
    await canary_runs(client)


async def test_the_reaper_clamps_a_stored_retry_delay_over_the_bound(client: dt.Durable) -> None:
    client.register(fails_once, canary)
    spawned = await client.spawn(fails_once, None)
    await fetch(client, "UPDATE @s.tasks SET retry = %s::jsonb", HUGE_RETRY)
    # Its worker vanished mid-attempt: a running run whose lease has expired.
    await fetch(
        client,
        "UPDATE @s.runs SET state = 'running', worker_id = 'gone:1', claimed_at = "
        "@s.clock_now(), lease_expires_at = @s.clock_now() - interval '1 second'",
    )
    await fetch(client, "UPDATE @s.tasks SET state = 'running'")
    assert await reap_expired(client) == 1
    info = await client.get_task(spawned.task_id)
    assert (info.state, info.attempts) == (dt.TaskState.PENDING, 2), info
    assert info.error is not None
    assert info.error["type"] == "LeaseExpired"
    await canary_runs(client)


@pytest.mark.parametrize("column", ["max_duration", "max_pending_delay"])
async def test_a_stored_deadline_over_the_bound_is_clamped(client: dt.Durable, column: str) -> None:
    # The claim (and the trigger noting max_duration when the task starts) adds these to
    # the clock: unguarded, the claim failed and took the claim loop with it.
    client.register(fails_once, canary)
    policy = dt.CancellationPolicy(max_duration=60, max_pending_delay=60)
    spawned = await client.spawn(fails_once, None, options=dt.SpawnOptions(cancellation=policy))
    await fetch(client, f"UPDATE @s.tasks SET {column} = %s::interval", HUGE_INTERVAL)
    await run_until_idle(client)
    await advance_clock(client, 2)  # the retry after the first failure (about a second)
    await run_until_idle(client)
    assert await client.wait_result(fails_once, spawned.task_id, timeout=5) == "done"
    await canary_runs(client)


async def test_the_deadline_sweep_clamps_a_stored_pending_delay_over_the_bound(
    client: dt.Durable,
) -> None:
    # A task no worker here runs: only the sweep looks at its deadline. Due after 60 s, it
    # is re-timed from the stored delay, which must not overflow.
    policy = dt.CancellationPolicy(max_pending_delay=60)
    options = dt.SpawnOptions(delay=30, cancellation=policy)
    spawned = await client.spawn_by_name("elsewhere", None, options=options)
    await fetch(client, "UPDATE @s.tasks SET max_pending_delay = %s::interval", HUGE_INTERVAL)
    await advance_clock(client, 61)
    await client.store.enforce_deadlines(100)
    [deadline] = await fetch(client, "SELECT due_at FROM @s.deadlines")
    now = await database_now(client)
    assert now + dt.MAX_DURATION - timedelta(days=1) < deadline["due_at"]
    assert deadline["due_at"] <= now + dt.MAX_DURATION
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.PENDING


async def test_a_heartbeat_clamps_a_stored_max_duration_over_the_bound(
    client: dt.Durable,
) -> None:
    @dt.task("stretch")
    async def stretch(ctx: dt.TaskContext, p: Any) -> str:
        async def widen(conn: Any) -> None:
            await conn.execute(
                f"UPDATE {client.schema}.tasks SET max_duration = %s::interval WHERE task_id = %s",
                (HUGE_INTERVAL, ctx.task_id),
            )

        await ctx.transaction("widen", widen)
        await ctx.heartbeat()
        return "beat"

    client.register(stretch, canary)
    policy = dt.CancellationPolicy(max_duration=60)
    spawned = await client.spawn(stretch, None, options=dt.SpawnOptions(cancellation=policy))
    await run_until_idle(client)
    assert await client.wait_result(stretch, spawned.task_id, timeout=5) == "beat"
    await canary_runs(client)


async def test_the_sql_bound_is_max_duration(client: dt.Durable) -> None:
    [row] = await fetch(
        client,
        "SELECT @s.bounded_add(t, %s::interval) - t AS over, "
        "@s.bounded_add(t, -%s::interval) - t AS under, "
        "@s.bounded_add(t, interval '90 seconds') - t AS within, "
        "@s.bounded_add(t, NULL) AS no_policy "
        "FROM (SELECT timestamptz '2026-12-06 00:00:00+00' AS t) AS c",
        HUGE_INTERVAL,
        HUGE_INTERVAL,
    )
    assert row == {
        "over": dt.MAX_DURATION,
        "under": -dt.MAX_DURATION,
        "within": timedelta(seconds=90),
        "no_policy": None,
    }
