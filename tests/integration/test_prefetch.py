"""`WorkerOptions.prefetch`: runs claimed ahead of free slots wait, leased, for a slot;
they start first claimed first, never beyond `concurrency`, and go back unspent when the
worker stops. (A crash with runs held: tests/chaos/test_prefetch_crash.py.)"""

from __future__ import annotations

import pytest
import trio

import durable_trio as dt
from support import fetch, runs_held_by

STARTED: list[int] = []
EXECUTING = [0, 0]  # now, most at once
GATE = trio.Event()
HOLD = 0.0  # seconds each run keeps its slot


@dt.task("numbered")
async def numbered(ctx: dt.TaskContext, n: int) -> int:
    STARTED.append(n)
    EXECUTING[0] += 1
    EXECUTING[1] = max(EXECUTING)
    try:
        await GATE.wait()
        await trio.sleep(HOLD)
        # A checkpoint: a held run's lease must still be good when it writes.
        return await ctx.step("double", lambda: n * 2, result_type=int)
    finally:
        EXECUTING[0] -= 1


def _reset(*, gate_open: bool, hold: float = 0.0) -> None:
    global GATE, HOLD
    STARTED.clear()
    EXECUTING[:] = [0, 0]
    GATE = trio.Event()
    if gate_open:
        GATE.set()
    HOLD = hold


async def _spawn(client: dt.Durable, numbers: list[int]) -> list[dt.SpawnResult[int]]:
    client.register(numbered)
    # The higher the number, the lower the priority: claimed (and started) in order.
    return [await client.spawn(numbered, n, options=dt.SpawnOptions(priority=-n)) for n in numbers]


async def _wait_holding(client: dt.Durable, worker: dt.Worker, count: int) -> None:
    with trio.fail_after(30):
        while worker.in_flight < count or await runs_held_by(client, worker.worker_id) < count:
            await trio.sleep(0.01)


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_held_runs_start_in_claim_order_within_the_concurrency(
    client: dt.Durable, concurrency: int
) -> None:
    _reset(gate_open=False)
    spawned = await _spawn(client, list(range(12)))
    options = dt.WorkerOptions(
        concurrency=concurrency, prefetch=3, poll_interval=0.05, worker_id="ahead"
    )
    async with client.worker(options) as worker:
        # The runs block their slots: the worker fills them and holds 3 runs beyond.
        await _wait_holding(client, worker, concurrency + 3)
        assert sorted(STARTED) == list(range(concurrency))  # the held ones wait
        GATE.set()
        results = [await client.wait_result(s, timeout=60) for s in spawned]
    assert results == [2 * n for n in range(12)]
    assert EXECUTING[1] == concurrency
    if concurrency == 1:
        assert list(range(12)) == STARTED  # priority order, held runs included
    else:
        assert sorted(STARTED) == list(range(12))
    assert {(await client.get_task(s.task_id)).attempts for s in spawned} == {1}


async def test_held_runs_are_renewed_while_they_wait(client: dt.Durable) -> None:
    # Each run keeps the one slot for 0.4 s: the last held one waits several leases.
    _reset(gate_open=True, hold=0.4)
    spawned = await _spawn(client, list(range(6)))
    options = dt.WorkerOptions(
        concurrency=1, prefetch=4, claim_timeout=0.6, poll_interval=0.05, worker_id="renew"
    )
    async with client.worker(options):
        results = [await client.wait_result(s, timeout=60) for s in spawned]
    assert results == [2 * n for n in range(6)]
    assert list(range(6)) == STARTED
    # No lease ran out: every task's first attempt completed it.
    assert {(await client.get_task(s.task_id)).attempts for s in spawned} == {1}
    rows = await fetch(client, "SELECT count(*) AS n FROM @s.runs")
    assert rows[0]["n"] == 6


async def _states(client: dt.Durable) -> list[tuple[str, int, int]]:
    rows = await fetch(
        client,
        "SELECT r.state, r.attempt, t.attempts FROM @s.runs r JOIN @s.tasks t USING (task_id)"
        " ORDER BY r.priority DESC",
    )
    return [(r["state"], r["attempt"], r["attempts"]) for r in rows]


async def test_shutdown_hands_held_runs_back_unspent(client: dt.Durable) -> None:
    _reset(gate_open=False)
    spawned = await _spawn(client, list(range(5)))
    options = dt.WorkerOptions(
        concurrency=1, prefetch=3, poll_interval=0.05, shutdown_grace=30, worker_id="stops"
    )
    async with trio.open_nursery() as nursery:
        worker = await nursery.start(client.new_worker(options).run)
        await _wait_holding(client, worker, 4)
        worker.shutdown()
        # The held runs go back at once, while the running one still has its grace.
        with trio.fail_after(30):
            while await runs_held_by(client, "stops") > 1:
                await trio.sleep(0.01)
        GATE.set()
    assert STARTED == [0]
    assert await _states(client) == [("completed", 1, 1)] + [("pending", 1, 1)] * 4
    async with client.worker(dt.WorkerOptions(poll_interval=0.05)):
        results = [await client.wait_result(s, timeout=60) for s in spawned]
    assert results == [0, 2, 4, 6, 8]
    assert {(await client.get_task(s.task_id)).attempts for s in spawned} == {1}


async def test_cancelling_the_worker_hands_held_runs_back(client: dt.Durable) -> None:
    _reset(gate_open=False)
    await _spawn(client, list(range(4)))
    options = dt.WorkerOptions(concurrency=1, prefetch=3, poll_interval=0.05, worker_id="gone")
    with trio.CancelScope() as outer:
        async with trio.open_nursery() as nursery:
            worker = await nursery.start(client.new_worker(options).run)
            await _wait_holding(client, worker, 4)
            outer.cancel()
    assert STARTED == [0]
    # All four back: the running one and the three held, none spending an attempt.
    assert await _states(client) == [("pending", 1, 1)] * 4


async def test_run_once_holds_nothing_back(client: dt.Durable) -> None:
    _reset(gate_open=True)
    await _spawn(client, list(range(4)))
    worker = client.new_worker(dt.WorkerOptions(concurrency=1, prefetch=3))
    report = await worker.run_once(limit=2)
    assert [r.outcome for r in report.runs] == [dt.RunOutcome.COMPLETED] * 2
    # Both at once, as without prefetch: a pass starts every run it claims.
    assert sorted(STARTED) == [0, 1]
    assert EXECUTING[1] == 2
    assert [s for s, _, _ in await _states(client)] == ["completed"] * 2 + ["pending"] * 2
