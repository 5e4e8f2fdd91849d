"""The fenced checkpoint write, both ways the writer sends it.

`Store.record` sends a lone checkpoint through `record_checkpoint` (scalar parameters,
the fast path) and anything else through `record_runs` (a JSON batch). Both must fence
the same way: a write lands only while the worker holds a live lease on the run, under
the claim it was queued under; a fenced write changes nothing; a name already stored
keeps its first value. Each case runs through both paths.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest

import durable_trio as dt
from durable_trio.testing import advance_clock
from support import query

LEASE = 30.0
WORKER = "w1"

Record = Callable[..., Awaitable[set[UUID]]]


@pytest.fixture(params=["record_checkpoint", "record_runs"])
def record(request: pytest.FixtureRequest, client: dt.Durable) -> Record:
    """Write one checkpoint for `run` as `worker`; the runs found owned."""

    def claims(run: dict[str, Any], kw: dict[str, Any]) -> dict[UUID, Any]:
        if kw.get("no_claim"):
            return {}
        return {run["run_id"]: kw.get("claimed_at", run["claimed_at"])}

    async def fast(worker: str, run: dict[str, Any], name: str, value: str, **kw: Any) -> Any:
        checkpoint = (run["run_id"], name, value)
        return await client.store.record(worker, [checkpoint], [], claims(run, kw))

    async def batch(worker: str, run: dict[str, Any], name: str, value: str, **kw: Any) -> Any:
        # A completion of an unknown run makes it a batch (record_runs); that write is
        # fenced out whatever happens, so only the checkpoint can land.
        checkpoint, ghost = (run["run_id"], name, value), (UUID(int=1), "null")
        return await client.store.record(worker, [checkpoint], [ghost], claims(run, kw))

    return fast if request.param == "record_checkpoint" else batch


async def claimed(client: dt.Durable) -> dict[str, Any]:
    await client.spawn_by_name("recorded", {})
    (run,) = await client.store.claim(client.queue, WORKER, ["recorded"], 1, LEASE)
    return run


async def stored(client: dt.Durable, run: dict[str, Any]) -> dict[str, Any]:
    rows = await query(
        client,
        "SELECT name, value, run_id FROM {schema}.checkpoints WHERE task_id = %s",
        run["task_id"],
    )
    return {r["name"]: (r["value"], r["run_id"]) for r in rows}


async def test_owned_run_gets_its_checkpoint(client: dt.Durable, record: Record) -> None:
    run = await claimed(client)
    assert await record(WORKER, run, "a", json.dumps({"x": [1, 2]})) == {run["run_id"]}
    assert await record(WORKER, run, "b", "null", no_claim=True) == {run["run_id"]}
    assert await stored(client, run) == {
        "a": ({"x": [1, 2]}, run["run_id"]),
        "b": (None, run["run_id"]),
    }


async def test_a_stored_name_keeps_its_first_value(client: dt.Durable, record: Record) -> None:
    run = await claimed(client)
    assert await record(WORKER, run, "a", "1") == {run["run_id"]}
    assert await record(WORKER, run, "a", "2") == {run["run_id"]}
    assert await stored(client, run) == {"a": (1, run["run_id"])}


async def test_another_worker_writes_nothing(client: dt.Durable, record: Record) -> None:
    run = await claimed(client)
    assert await record("intruder", run, "a", "1") == set()
    assert await stored(client, run) == {}


async def test_a_write_from_an_earlier_claim_is_fenced(client: dt.Durable, record: Record) -> None:
    run = await claimed(client)
    earlier = run["claimed_at"] - timedelta(seconds=1)
    assert await record(WORKER, run, "a", "1", claimed_at=earlier) == set()
    assert await stored(client, run) == {}


async def test_an_expired_lease_writes_nothing(client: dt.Durable, record: Record) -> None:
    run = await claimed(client)
    await advance_clock(client, LEASE + 1)
    assert await record(WORKER, run, "a", "1") == set()
    assert await stored(client, run) == {}


async def test_a_run_no_longer_running_writes_nothing(client: dt.Durable, record: Record) -> None:
    run = await claimed(client)
    assert await client.store.release(run["run_id"], WORKER)
    assert await record(WORKER, run, "a", "1") == set()
    assert await stored(client, run) == {}
