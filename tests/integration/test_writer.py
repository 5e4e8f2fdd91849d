"""The worker's group commit (`_writer.Writer`): checkpoints and completions of many runs
in one fenced statement, without loosening what a step promises."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

import durable_trio as dt
from durable_trio._rows import ClaimedRun
from durable_trio._run import RunState
from durable_trio._store import Store
from durable_trio._writer import Write, Writer
from durable_trio.testing import run_until_idle
from support import query

LEASE = 30.0


@dt.task("writer_noop")
async def noop(ctx: dt.TaskContext, p: int) -> int:
    return p


@dt.task("writer_one_step")
async def one_step(ctx: dt.TaskContext, p: int) -> int:
    return await ctx.step("double", lambda: p * 2)


async def test_last_checkpoint_commits_with_the_completion(client: dt.Durable) -> None:
    client.register(one_step)
    spawned = await client.spawn(one_step, 21)
    await run_until_idle(client)
    [row] = await query(
        client,
        "SELECT c.created_at AS saved, t.finished_at AS done, t.result FROM {schema}.tasks t "
        "JOIN {schema}.checkpoints c USING (task_id) WHERE t.task_id = %s",
        spawned.task_id,
    )
    assert row["result"] == 42
    # Both stamped with the same transaction's clock reading: one record_runs call.
    assert row["saved"] == row["done"]


SEEN: dict[str, list[str]] = {}


@dt.task("writer_three_steps")
async def three_steps(ctx: dt.TaskContext, p: None) -> list[str]:
    async def durable_so_far(step: str) -> list[str]:
        # Read from another connection: only committed checkpoints are visible there.
        rows = await query(
            CLIENT[0], "SELECT name FROM {schema}.checkpoints WHERE task_id = %s", ctx.task_id
        )
        SEEN[step] = sorted(r["name"] for r in rows)
        return SEEN[step]

    await ctx.step("a", durable_so_far, "a")
    await ctx.step("b", durable_so_far, "b")
    return await ctx.step("c", durable_so_far, "c")


CLIENT: list[dt.Durable] = []


async def test_a_step_body_runs_only_after_earlier_checkpoints_are_durable(
    client: dt.Durable,
) -> None:
    CLIENT[:] = [client]
    SEEN.clear()
    client.register(three_steps)
    spawned = await client.spawn(three_steps, None)
    await run_until_idle(client)
    assert SEEN == {"a": [], "b": ["a"], "c": ["a", "b"]}
    assert await client.wait_result(three_steps, spawned.task_id, timeout=5) == ["a", "b"]


def _run_state(row: ClaimedRun, client: dt.Durable, writer: Writer, worker: str) -> RunState:
    return RunState.from_claim(
        row,
        queue=client.queue,
        definition=noop,
        store=client.store,
        writer=writer,
        worker_id=worker,
        claim_timeout=LEASE,
        prepare_spawn=lambda *a, **k: {},
    )


async def _written(writer: Writer, writes: list[Write]) -> None:
    """Run the writer until every write is done."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        for write in writes:
            await write.done.wait()
        nursery.cancel_scope.cancel()


async def _claim(client: dt.Durable, worker: str, n: int) -> list[ClaimedRun]:
    return await client.store.claim(client.queue, worker, ["writer_noop"], n, LEASE)


async def _results(client: dt.Durable) -> dict[Any, Any]:
    rows = await query(client, "SELECT task_id, state, result FROM {schema}.tasks")
    return {r["task_id"]: (r["state"], r["result"]) for r in rows}


async def test_writes_queued_together_share_one_batch(client: dt.Durable) -> None:
    client.register(noop)
    await client.spawn_many(noop, [1, 2, 3])
    writer = Writer(client.store, "A")
    runs = [_run_state(row, client, writer, "A") for row in await _claim(client, "A", 3)]
    writes: list[Write] = []
    for n, run in enumerate(runs):
        writes.append(writer.submit(run, "step", json.dumps(n)))
        writes.append(writer.submit(run, None, json.dumps(n * 10)))
    await _written(writer, writes)
    assert writer.batches == 1
    assert all(w.owned for w in writes)
    results = await _results(client)
    assert sorted(results[run.task_id] for run in runs) == [
        ("completed", 0),
        ("completed", 10),
        ("completed", 20),
    ]
    saved = await query(client, "SELECT value FROM {schema}.checkpoints ORDER BY value")
    assert [r["value"] for r in saved] == [0, 1, 2]


async def test_a_batch_is_fenced_run_by_run(client: dt.Durable) -> None:
    client.register(noop)
    await client.spawn_many(noop, [1, 2])
    writer = Writer(client.store, "A")
    mine = _run_state((await _claim(client, "A", 1))[0], client, writer, "A")
    # Another worker's run, submitted under A's name: A may write nothing for it.
    theirs = _run_state((await _claim(client, "B", 1))[0], client, writer, "A")
    writes = [
        writer.submit(theirs, "step", "1"),
        writer.submit(mine, "step", "2"),
        writer.submit(theirs, None, "3"),
        writer.submit(mine, None, "4"),
    ]
    await _written(writer, writes)
    assert [w.owned for w in writes] == [False, True, False, True]
    results = await _results(client)
    assert results[mine.task_id] == ("completed", 4)
    assert results[theirs.task_id] == ("running", None)
    saved = await query(client, "SELECT task_id, value FROM {schema}.checkpoints")
    assert [(r["task_id"], r["value"]) for r in saved] == [(mine.task_id, 2)]


async def test_a_bad_write_does_not_sink_the_rest_of_its_batch(client: dt.Durable) -> None:
    client.register(noop)
    await client.spawn_many(noop, [1, 2])
    writer = Writer(client.store, "A")
    good, bad = (_run_state(row, client, writer, "A") for row in await _claim(client, "A", 2))
    writes = [
        writer.submit(bad, "step", "this is not JSON"),
        writer.submit(good, "step", "5"),
        writer.submit(good, None, "6"),
        writer.submit(bad, None, "7"),
    ]
    await _written(writer, writes)
    assert [w.owned for w in writes] == [False, True, True, False]
    # Written alone it fails again: its task fails for good, saying why.
    assert bad.lost is not None
    assert bad.lost.startswith("task failed: its checkpoint or result")
    assert good.lost is None
    results = await _results(client)
    assert results[good.task_id] == ("completed", 6)
    assert results[bad.task_id] == ("failed", None)
    info = await client.get_task(bad.task_id)
    assert info.error is not None
    assert info.error["type"] == "durable_trio.UnprocessableTask"
    assert info.error["stage"] == "record"
    assert "invalid input syntax for type json" in info.error["message"]


ACTIVE = {"now": 0, "most": 0, "held": 0}


@dt.task("writer_counted")
async def counted(ctx: dt.TaskContext, p: int) -> int:
    ACTIVE["now"] += 1
    ACTIVE["most"] = max(ACTIVE["most"], ACTIVE["now"])
    ACTIVE["held"] = max(ACTIVE["held"], WORKERS[0].in_flight)
    try:
        await trio.lowlevel.checkpoint()
        return await ctx.step("s", lambda: p)
    finally:
        ACTIVE["now"] -= 1


WORKERS: list[dt.Worker] = []


async def test_concurrency_limits_task_code_while_outcomes_are_written(
    client: dt.Durable,
) -> None:
    ACTIVE.update(now=0, most=0, held=0)
    client.register(counted)
    await client.spawn_many(counted, list(range(30)))
    async with client.worker(dt.WorkerOptions(concurrency=2)) as worker:
        WORKERS[:] = [worker]
        with trio.fail_after(30):
            while any(state != "completed" for state, _ in (await _results(client)).values()):
                await trio.sleep(0.01)
    assert ACTIVE["most"] <= 2
    assert ACTIVE["held"] <= 4
    assert sorted(r for _, r in (await _results(client)).values()) == list(range(30))


@dt.task("writer_nothing")
async def nothing(ctx: dt.TaskContext, p: None) -> None:
    await ctx.step("nothing", lambda: None)


async def test_a_json_null_is_stored_as_json_null(client: dt.Durable) -> None:
    client.register(nothing)
    spawned = await client.spawn(nothing, None)
    await run_until_idle(client)
    [row] = await query(
        client,
        "SELECT t.state, t.result = 'null'::jsonb AS result_null, "
        "c.value = 'null'::jsonb AS value_null FROM {schema}.tasks t "
        "JOIN {schema}.checkpoints c USING (task_id) WHERE t.task_id = %s",
        spawned.task_id,
    )
    assert row == {"state": "completed", "result_null": True, "value_null": True}


def slow_writer(monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
    """Every batch takes `delay` seconds longer: writes stay queued meanwhile."""
    record = Writer._record

    async def slow(self: Writer, writes: Any, claim: Any) -> Any:
        await trio.sleep(delay)
        return await record(self, writes, claim)

    monkeypatch.setattr(Writer, "_record", slow)


STEPS_RUN: dict[str, int] = {}


@dt.task("writer_siblings")
async def siblings(ctx: dt.TaskContext, p: None) -> None:
    async def slow_step() -> int:
        STEPS_RUN["b"] = STEPS_RUN.get("b", 0) + 1
        await trio.sleep(0.1)
        return 2

    async def sleeper() -> None:
        await ctx.step("a", lambda: 1)
        await ctx.sleep_for("nap", 3600)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ctx.step, "b", slow_step)
        await trio.sleep(0.01)
        nursery.start_soon(sleeper)


async def test_a_sibling_checkpoint_is_durable_before_the_task_suspends(
    client: dt.Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "b" is queued while "a"'s sleep waits for the writer: the suspension must wait for
    # "b" too, or the run would sleep without it and run "b" again when it wakes.
    STEPS_RUN.clear()
    slow_writer(monkeypatch, 0.2)
    client.register(siblings)
    spawned = await client.spawn(siblings, None)
    async with client.worker(dt.WorkerOptions(poll_interval=0.05)) as worker:
        with trio.fail_after(10):
            while (await client.get_task(spawned.task_id)).state is not dt.TaskState.SLEEPING:
                await trio.sleep(0.02)
            while worker.pending_writes:
                await trio.sleep(0.02)
    rows = await query(
        client, "SELECT name FROM {schema}.checkpoints WHERE task_id = %s", spawned.task_id
    )
    assert {"a", "b"} <= {r["name"] for r in rows}
    assert STEPS_RUN == {"b": 1}


@dt.task("writer_quick")
async def quick(ctx: dt.TaskContext, p: int) -> int:
    return p


async def test_shutdown_lets_queued_completions_land(
    client: dt.Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_writer(monkeypatch, 0.5)
    client.register(quick)
    spawned = await client.spawn(quick, 7)
    async with client.worker(dt.WorkerOptions(shutdown_grace=0.05)) as worker:
        with trio.fail_after(10):
            while worker.pending_writes == 0:
                await trio.sleep(0.005)
    # Shut down while the completion was queued: it was written, not handed back.
    info = await client.get_task(spawned.task_id)
    assert (info.state, info.result, info.attempts) == (dt.TaskState.COMPLETED, 7, 1)


async def test_a_write_counts_only_under_the_claim_it_was_made_in(client: dt.Durable) -> None:
    client.register(noop)
    await client.spawn(noop, 1)
    writer = Writer(client.store, "A")
    first = _run_state((await _claim(client, "A", 1))[0], client, writer, "A")
    # Handed back and claimed again by the same worker: same run, a new claim.
    assert await client.store.release(first.run_id, "A")
    second = _run_state((await _claim(client, "A", 1))[0], client, writer, "A")
    assert (second.run_id, second.worker_id) == (first.run_id, first.worker_id)
    assert second.claimed_at != first.claimed_at
    late = [writer.submit(first, "step", "1"), writer.submit(first, None, "1")]
    await _written(writer, late)
    assert [w.owned for w in late] == [False, False]
    current = [writer.submit(second, "step", "2"), writer.submit(second, None, "2")]
    await _written(writer, current)
    assert [w.owned for w in current] == [True, True]
    saved = await query(client, "SELECT value FROM {schema}.checkpoints")
    assert [r["value"] for r in saved] == [2]


async def test_batches_are_bounded_by_size(client: dt.Durable) -> None:
    client.register(noop)
    await client.spawn_many(noop, [1, 2, 3])
    writer = Writer(client.store, "A", max_bytes=10)
    runs = [_run_state(row, client, writer, "A") for row in await _claim(client, "A", 3)]
    # 8 bytes each: two would pass 10, so one per batch; a write alone always goes.
    writes = [writer.submit(run, None, '"' + "x" * 6 + '"') for run in runs]
    writes.append(writer.submit(runs[0], "late", '"' + "y" * 20 + '"'))
    await _written(writer, writes)
    assert writer.batches == 4
    assert [w.owned for w in writes] == [True, True, True, False]  # runs[0] had completed


async def test_a_completion_and_the_next_claim_share_one_round_trip(client: dt.Durable) -> None:
    client.register(one_step)
    n = 12
    await client.spawn_many(one_step, list(range(n)))
    done_sql = "SELECT result FROM {schema}.tasks WHERE state = 'completed'"
    async with client.worker(dt.WorkerOptions(concurrency=1, poll_interval=0.05)) as worker:
        with trio.fail_after(20):
            while len(rows := await query(client, done_sql)) < n:
                await trio.sleep(0.02)
        assert worker._writer is not None
        claimed_with_writes = worker._writer.claims
    # The first run is claimed on its own; each of the others with the completion of the
    # run before it, in the writer's one record_and_claim call.
    assert claimed_with_writes == n - 1
    assert sorted(r["result"] for r in rows) == [2 * i for i in range(n)]


async def test_shutdown_waits_for_a_claim_made_with_the_writes(
    client: dt.Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_writer(monkeypatch, 0.3)
    client.register(quick)
    await client.spawn_many(quick, [1, 2, 3])
    async with client.worker(
        dt.WorkerOptions(concurrency=1, shutdown_grace=0.05, poll_interval=0.05)
    ) as worker:
        assert worker._writer is not None
        with trio.fail_after(10):
            while worker._writer.pending == 0:
                await trio.sleep(0.005)
        # Leaving the block shuts the worker down while the writer's round trip, claiming
        # the next run, is in flight: that run is started, then finished or handed back.
    rows = await query(client, "SELECT state, attempt FROM {schema}.runs ORDER BY run_id")
    assert {r["state"] for r in rows} <= {"completed", "pending"}
    assert all(r["attempt"] == 1 for r in rows)
    await run_until_idle(client)
    done = await query(client, "SELECT result FROM {schema}.tasks WHERE state = 'completed'")
    assert sorted(r["result"] for r in done) == [1, 2, 3]


OPEN: list[trio.Event] = []


@dt.task("writer_gated")
async def gated(ctx: dt.TaskContext, p: int) -> int:
    ACTIVE["now"] += 1
    ACTIVE["most"] = max(ACTIVE["most"], ACTIVE["now"])
    try:
        if p == 0:
            await OPEN[0].wait()
        await trio.sleep(0.5)  # outlasts the slow claim: runs started beside it overlap
        return p
    finally:
        ACTIVE["now"] -= 1


async def test_the_claim_loop_and_the_writer_never_claim_the_same_slot(
    client: dt.Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    ACTIVE.update(now=0, most=0, held=0)
    OPEN[:] = [trio.Event()]
    slow = trio.Event()
    claim = Store.claim

    async def slow_claim(self: Store, *args: Any) -> Any:
        if slow.is_set():
            await trio.sleep(0.3)
        return await claim(self, *args)

    monkeypatch.setattr(Store, "claim", slow_claim)
    client.register(gated)
    await client.spawn(gated, 0)
    async with client.worker(dt.WorkerOptions(concurrency=2, poll_interval=0.05)):
        with trio.fail_after(30):
            while ACTIVE["now"] < 1:
                await trio.sleep(0.01)
            # The claim loop takes the one free slot, slowly; meanwhile the held run ends,
            # and the writer, with the worker's last run finishing, claims with its write.
            slow.set()
            await client.spawn_many(gated, [1, 2, 3, 4])
            await trio.sleep(0.1)
            OPEN[0].set()
            while any(state != "completed" for state, _ in (await _results(client)).values()):
                await trio.sleep(0.01)
    assert ACTIVE["most"] <= 2
