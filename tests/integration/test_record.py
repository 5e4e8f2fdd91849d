"""The fenced writes of one run, every way the writer sends them.

`Store.record` sends one run's checkpoint, or its completion after at most one
checkpoint, through the query `record_one` (the SQL function `record_one`: scalar
parameters, the fast path) and anything else through `record_runs` (a JSON batch);
`Store.record_and_claim` likewise picks `record_one_and_claim` or `record_and_claim`. All
four must fence the same way: a write lands only while the worker holds a live lease on
the run, under the claim it was queued under; a fenced write changes nothing; a name
already stored keeps its first value. Each case runs through every path."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest

import durable_trio as dt
from durable_trio._rows import ClaimedRun
from durable_trio._store import ClaimArgs
from durable_trio.testing import advance_clock
from support import query

LEASE = 30.0
WORKER = "w1"

Write = Callable[..., Awaitable[set[UUID]]]
PATHS = ["record_one", "record_runs", "record_one_and_claim", "record_and_claim"]


def writer(path: str, client: dt.Durable) -> Write:
    """Write `checkpoints` then `completions` of `run` as `worker` through `path`; the
    runs found owned. The batch paths add a completion of a run nobody has (fenced out
    whatever happens, so only `run`'s writes can land); the claiming paths claim a task
    name nobody spawned."""

    async def write(
        worker: str,
        run: ClaimedRun,
        checkpoints: list[tuple[UUID, str, str]],
        completions: list[tuple[UUID, str]],
        **kw: Any,
    ) -> set[UUID]:
        if path in ("record_runs", "record_and_claim"):
            completions = [*completions, (UUID(int=1), "null")]
        claims = {} if kw.get("no_claim") else {run.run_id: kw.get("claimed_at", run.claimed_at)}
        if not path.endswith("_and_claim"):
            return await client.store.record(worker, checkpoints, completions, claims)
        nothing = ClaimArgs(client.queue, ["nobody"], 1, LEASE)
        owned, rows = await client.store.record_and_claim(
            worker, checkpoints, completions, claims, nothing
        )
        assert rows == []
        return owned

    return write


Record = Callable[..., Awaitable[set[UUID]]]


@pytest.fixture(params=PATHS)
def record(request: pytest.FixtureRequest, client: dt.Durable) -> Record:
    """Write one checkpoint for `run` as `worker`; the runs found owned."""
    write = writer(request.param, client)

    async def call(worker: str, run: ClaimedRun, name: str, value: str, **kw: Any) -> Any:
        return await write(worker, run, [(run.run_id, name, value)], [], **kw)

    return call


async def claimed(client: dt.Durable) -> ClaimedRun:
    await client.spawn_by_name("recorded", {})
    (run,) = await client.store.claim(client.queue, WORKER, ["recorded"], 1, LEASE)
    return run


async def stored(client: dt.Durable, run: ClaimedRun) -> dict[str, Any]:
    rows = await query(
        client,
        "SELECT name, value, run_id FROM {schema}.checkpoints WHERE task_id = %s",
        run.task_id,
    )
    return {r["name"]: (r["value"], r["run_id"]) for r in rows}


async def test_owned_run_gets_its_checkpoint(client: dt.Durable, record: Record) -> None:
    run = await claimed(client)
    assert await record(WORKER, run, "a", json.dumps({"x": [1, 2]})) == {run.run_id}
    assert await record(WORKER, run, "b", "null", no_claim=True) == {run.run_id}
    assert await stored(client, run) == {
        "a": ({"x": [1, 2]}, run.run_id),
        "b": (None, run.run_id),
    }
    (row,) = await query(
        client,
        "SELECT jsonb_typeof(value) AS kind FROM {schema}.checkpoints"
        " WHERE task_id = %s AND name = 'b'",
        run.task_id,
    )
    assert row["kind"] == "null"  # a JSON null, not SQL NULL


async def test_a_stored_name_keeps_its_first_value(client: dt.Durable, record: Record) -> None:
    run = await claimed(client)
    assert await record(WORKER, run, "a", "1") == {run.run_id}
    assert await record(WORKER, run, "a", "2") == {run.run_id}
    assert await stored(client, run) == {"a": (1, run.run_id)}


async def test_another_worker_writes_nothing(client: dt.Durable, record: Record) -> None:
    run = await claimed(client)
    assert await record("intruder", run, "a", "1") == set()
    assert await stored(client, run) == {}


async def test_a_write_from_an_earlier_claim_is_fenced(client: dt.Durable, record: Record) -> None:
    run = await claimed(client)
    earlier = run.claimed_at - timedelta(seconds=1)
    assert await record(WORKER, run, "a", "1", claimed_at=earlier) == set()
    assert await stored(client, run) == {}


async def test_an_expired_lease_writes_nothing(client: dt.Durable, record: Record) -> None:
    run = await claimed(client)
    await advance_clock(client, LEASE + 1)
    assert await record(WORKER, run, "a", "1") == set()
    assert await stored(client, run) == {}


async def test_a_run_no_longer_running_writes_nothing(client: dt.Durable, record: Record) -> None:
    run = await claimed(client)
    assert await client.store.release(run.run_id, WORKER)
    assert await record(WORKER, run, "a", "1") == set()
    assert await stored(client, run) == {}


# -- a run's last write: its completion, after at most one checkpoint -----------------------

Finish = Callable[..., Awaitable[set[UUID]]]


@pytest.fixture(params=PATHS)
def finish(request: pytest.FixtureRequest, client: dt.Durable) -> Finish:
    """Complete `run` with `result` as `worker`, after checkpoint `name` if given."""
    write = writer(request.param, client)

    async def call(
        worker: str, run: ClaimedRun, result: str, name: str | None = None, **kw: Any
    ) -> set[UUID]:
        run_id = run.run_id
        checkpoints = [] if name is None else [(run_id, name, "7")]
        return await write(worker, run, checkpoints, [(run_id, result)], **kw)

    return call


async def task_row(client: dt.Durable, run: ClaimedRun) -> dict[str, Any]:
    (row,) = await query(
        client,
        "SELECT t.state, t.result, r.state AS run_state, r.lease_expires_at IS NULL AS freed"
        " FROM {schema}.tasks t JOIN {schema}.runs r ON r.run_id = t.last_run_id"
        " WHERE t.task_id = %s",
        run.task_id,
    )
    return row


async def test_owned_run_finishes_with_its_checkpoint(client: dt.Durable, finish: Finish) -> None:
    run = await claimed(client)
    assert await finish(WORKER, run, json.dumps({"ok": True}), "last") == {run.run_id}
    assert await task_row(client, run) == {
        "state": "completed",
        "result": {"ok": True},
        "run_state": "completed",
        "freed": True,
    }
    assert await stored(client, run) == {"last": (7, run.run_id)}


async def test_owned_run_finishes_without_a_checkpoint(client: dt.Durable, finish: Finish) -> None:
    run = await claimed(client)
    assert await finish(WORKER, run, "null", no_claim=True) == {run.run_id}
    assert (await task_row(client, run))["state"] == "completed"
    (row,) = await query(
        client,
        "SELECT jsonb_typeof(result) AS kind FROM {schema}.tasks WHERE task_id = %s",
        run.task_id,
    )
    assert row["kind"] == "null"  # a JSON null, not SQL NULL
    assert await stored(client, run) == {}


async def test_a_finish_keeps_a_checkpoint_already_stored(
    client: dt.Durable, finish: Finish, record: Record
) -> None:
    run = await claimed(client)
    assert await record(WORKER, run, "last", "1") == {run.run_id}
    assert await finish(WORKER, run, "2", "last") == {run.run_id}
    assert await stored(client, run) == {"last": (1, run.run_id)}
    assert (await task_row(client, run))["result"] == 2


@pytest.mark.parametrize("case", ["intruder", "earlier claim", "expired", "released"])
async def test_a_fenced_finish_writes_nothing(
    client: dt.Durable, finish: Finish, case: str
) -> None:
    run = await claimed(client)
    worker, kw = WORKER, {}
    if case == "intruder":
        worker = "intruder"
    elif case == "earlier claim":
        kw["claimed_at"] = run.claimed_at - timedelta(seconds=1)
    elif case == "expired":
        await advance_clock(client, LEASE + 1)
    else:
        assert await client.store.release(run.run_id, WORKER)
    before = await task_row(client, run)
    assert await finish(worker, run, "1", "last", **kw) == set()
    assert await task_row(client, run) == before
    assert before["state"] != "completed"
    assert await stored(client, run) == {}


@dt.task("kid")
async def kid(ctx: dt.TaskContext, x: int) -> int:
    return await ctx.step("double", lambda: x * 2)


@dt.task("mum")
async def mum(ctx: dt.TaskContext, x: int) -> int:
    handle = await ctx.spawn("kid", kid, x)
    return await ctx.join("kid", handle) + 1


async def test_a_child_finishing_alone_wakes_its_parent(
    client: dt.Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At concurrency 1 the child's last checkpoint and completion go out with the next
    claim (record_one_and_claim) and must tell the joining parent, as record_runs does."""
    used: list[str] = []
    all_rows = type(client.store)._all

    async def spy(self: Any, name: str, params: dict[str, Any], conn: Any = None) -> Any:
        used.append(name)
        return await all_rows(self, name, params, conn)

    monkeypatch.setattr(type(client.store), "_all", spy)
    client.register(mum)
    client.register(kid)
    spawned = await client.spawn(mum, 20)
    async with client.worker(dt.WorkerOptions(concurrency=1)):
        assert await client.wait_result(mum, spawned.task_id, timeout=30) == 41
    assert "record_one_and_claim" in used
