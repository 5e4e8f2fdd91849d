"""Stopping a worker the trio way: cancelling the task that runs it hands its runs back at
once, without spending an attempt; only a real crash leaves them to their leases."""

from __future__ import annotations

import trio

import durable_trio as dt
from support import fetch

STARTED = trio.Event()
RUNS: list[int] = []


@dt.task("forever")
async def forever(ctx: dt.TaskContext, p: None) -> str:
    RUNS.append(ctx.attempt)
    if len(RUNS) == 1:  # the first run blocks until its worker is cancelled
        STARTED.set()
        await trio.sleep_forever()
    return "finished"


async def run_row(client: dt.Durable, task_id: object) -> dict[str, object]:
    [row] = await fetch(
        client,
        "SELECT r.state, r.attempt, r.worker_id, t.attempts FROM @s.runs r"
        " JOIN @s.tasks t USING (task_id) WHERE r.task_id = %s ORDER BY r.attempt DESC LIMIT 1",
        task_id,
    )
    return row


async def test_cancelling_the_worker_hands_its_runs_back(client: dt.Durable) -> None:
    global STARTED
    STARTED = trio.Event()
    RUNS.clear()
    client.register(forever)
    spawned = await client.spawn(forever, None)
    options = dt.WorkerOptions(worker_id="cancelled-w", poll_interval=0.05, claim_timeout=600)
    with trio.CancelScope() as outer:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.new_worker(options).run)
            await STARTED.wait()
            outer.cancel()  # as Ctrl-C under trio.run, or a parent scope, would
    row = await run_row(client, spawned.task_id)
    # Handed back: claimable now (not after the 600 s lease), still attempt 1.
    assert (row["state"], row["attempt"], row["attempts"]) == ("pending", 1, 1)
    async with client.worker(dt.WorkerOptions(worker_id="next-w", poll_interval=0.05)):
        assert await client.wait_result(spawned, timeout=30) == "finished"
    assert (await client.get_task(spawned.task_id)).attempts == 1
    assert RUNS == [1, 1]  # the same attempt, run again
