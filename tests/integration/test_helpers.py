"""Deterministic helpers: ctx.now(), ctx.random() and ctx.uuid7() are checkpointed, so a
replay (forced here by a durable sleep) sees exactly the values of the first run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import attrs

import durable_trio as dt
from durable_trio.testing import advance_clock, database_now, run_until_idle


@attrs.frozen
class Drawn:
    now: datetime
    random: float
    uuid: UUID
    now_again: float  # seconds between two now() calls
    random_again: float
    uuid_again: UUID


@attrs.frozen
class Out:
    before: Drawn
    after_sleep: datetime


async def draw(ctx: dt.TaskContext) -> Drawn:
    now = await ctx.now()
    rnd = await ctx.random()
    uid = await ctx.uuid7()
    now2 = await ctx.now()
    rnd2 = await ctx.random()
    uid2 = await ctx.uuid7()
    return Drawn(now, rnd, uid, (now2 - now).total_seconds(), rnd2, uid2)


async def test_helpers_return_identical_values_on_replay(client: dt.Durable) -> None:
    seen: list[Drawn] = []
    meta: list[tuple[UUID, UUID, int, str, str, dict[str, Any]]] = []

    @dt.task("dice")
    async def dice(ctx: dt.TaskContext, p: None) -> Out:
        drawn = await draw(ctx)
        seen.append(drawn)
        meta.append((ctx.task_id, ctx.run_id, ctx.attempt, ctx.queue, ctx.task_name, ctx.headers))
        await ctx.sleep_for("nap", 60)
        return Out(drawn, await ctx.now())

    client.register(dice)
    t0 = await database_now(client)
    spawned = await client.spawn(dice, None, options=dt.SpawnOptions(headers={"trace": "abc"}))
    await run_until_idle(client)
    assert len(seen) == 1
    first = seen[0]

    await advance_clock(client, 3600)
    await run_until_idle(client)
    out = await client.wait_result(dice, spawned.task_id, timeout=10)
    assert len(seen) == 2
    assert seen[1] == first  # the replay saw the recorded values, not new ones
    assert out.before == first

    # The values themselves are sensible.
    assert first.now.tzinfo is not None
    assert first.now.utcoffset() == timedelta(0)
    assert t0 <= first.now < t0 + timedelta(seconds=30)
    assert first.now_again >= 0
    assert 0.0 <= first.random < 1.0
    assert 0.0 <= first.random_again < 1.0
    assert first.random != first.random_again
    assert first.uuid.version == 7
    assert first.uuid_again.version == 7
    assert first.uuid != first.uuid_again
    # now() after the sleep is new: it reflects the advanced database clock.
    assert out.after_sleep >= first.now + timedelta(seconds=3600)

    assert (
        meta[0]
        == meta[1]
        == (
            spawned.task_id,
            spawned.run_id,
            1,
            "default",
            "dice",
            {"trace": "abc"},
        )
    )

    async with client.store.pool.acquire() as conn:
        cur = await conn.execute(
            f'SELECT name, value FROM "{client.schema}".checkpoints WHERE task_id = %s'
            " ORDER BY name",
            (spawned.task_id,),
        )
        stored = {row["name"]: row["value"] for row in await cur.fetchall()}
    assert sorted(stored) == [
        "$now:",
        "$now:#2",
        "$now:#3",
        "$random:",
        "$random:#2",
        "$sleep:nap",
        "$uuid7:",
        "$uuid7:#2",
    ]
    assert stored["$random:"] == first.random
    assert UUID(stored["$uuid7:"]) == first.uuid
    assert datetime.fromisoformat(stored["$now:"]).astimezone(UTC) == first.now


async def test_helpers_survive_a_retry(client: dt.Durable) -> None:
    """A failed attempt's recorded values are reused by the next attempt."""
    seen: list[Drawn] = []

    @dt.task("dice_retry", options=dt.SpawnOptions(retry=dt.RetryStrategy.none()))
    async def dice_retry(ctx: dt.TaskContext, p: None) -> Drawn:
        drawn = await draw(ctx)
        seen.append(drawn)
        if ctx.attempt == 1:
            raise RuntimeError("try again")
        return drawn

    client.register(dice_retry)
    spawned = await client.spawn(dice_retry, None)
    await run_until_idle(client)
    assert await client.wait_result(dice_retry, spawned.task_id, timeout=10) == seen[0]
    assert len(seen) == 2
    assert seen[0] == seen[1]
