"""Heartbeats are not held up by a run that sits inside its own fenced transaction."""

from __future__ import annotations

import trio

import durable_trio as dt


@dt.task("hb-noop")
async def noop(ctx: dt.TaskContext, value: int) -> int:
    return value


async def test_heartbeat_reports_a_run_busy_in_its_transaction(client: dt.Durable) -> None:
    client.register(noop)
    await client.spawn(noop, 1)
    await client.spawn(noop, 2)
    store = client.store
    rows = await store.claim("default", "w1", ["hb-noop"], 2, 30)
    busy, idle = rows[0].run_id, rows[1].run_id
    async with store.owned_transaction(busy, "w1"):
        # Without SKIP LOCKED this waits for the transaction above: a deadlock here.
        with trio.fail_after(10):
            held = await store.heartbeat("w1", [busy, idle], 120)
    assert set(held) == {busy, idle}
    # The free run's lease was extended; the busy one kept the lease it had.
    assert held[idle][1] is True
    assert held[busy][1] is False
    assert held[idle][0] > held[busy][0]


async def test_heartbeat_still_drops_runs_it_does_not_own(client: dt.Durable) -> None:
    client.register(noop)
    await client.spawn(noop, 1)
    store = client.store
    (row,) = await store.claim("default", "w1", ["hb-noop"], 1, 30)
    assert await store.heartbeat("w2", [row.run_id], 30) == {}
