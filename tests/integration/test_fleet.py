"""The workers registry: live workers, expiry, and due work that no live worker serves."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import trio

import durable_trio as dt
from durable_trio.testing import advance_clock


async def register(client: dt.Durable, worker: str, names: list[str], ttl: float = 30) -> None:
    await client.store.register_worker(worker, "host-a", 4242, ["default"], names, 8, ttl)


async def test_a_registered_worker_is_listed_until_it_expires_or_leaves(
    client: dt.Durable,
) -> None:
    await register(client, "w1", ["a", "b"])
    await register(client, "w2", ["c"], ttl=300)
    [w1, w2] = await client.workers()
    assert (w1.worker_id, w1.host, w1.pid, w1.queues, w1.task_names) == (
        "w1",
        "host-a",
        4242,
        ["default"],
        ["a", "b"],
    )
    assert w1.expires_at - w1.last_seen_at == timedelta(seconds=30)
    assert w2.worker_id == "w2"
    await advance_clock(client, 60)  # w1 stopped refreshing its row: it is gone
    assert [w.worker_id for w in await client.workers()] == ["w2"]
    await client.store.unregister_worker("w2")
    assert await client.workers() == []


async def test_a_refresh_keeps_the_start_and_a_new_process_starts_anew(
    client: dt.Durable,
) -> None:
    await register(client, "w1", ["a"])
    [first] = await client.workers()
    await advance_clock(client, 10)
    await register(client, "w1", ["a", "b"])
    [again] = await client.workers()
    assert again.started_at == first.started_at
    assert again.last_seen_at > first.last_seen_at
    assert again.task_names == ["a", "b"]
    await client.store.register_worker("w1", "host-a", 999, ["default"], ["a"], 8, 30)
    [restarted] = await client.workers()
    assert restarted.started_at > first.started_at


async def test_due_runs_of_a_name_no_live_worker_has_are_unserved(client: dt.Durable) -> None:
    await register(client, "w1", ["known"], ttl=3600)
    await client.spawn_by_name("known", None)
    await client.spawn_by_name("flakey", None)
    await client.spawn_by_name("flakey", None)
    await client.spawn_by_name("later", None, options=dt.SpawnOptions(delay=7200))
    assert await client.unserved_tasks(threshold=60) == []  # not due for long enough yet
    await advance_clock(client, 120)
    [unserved] = await client.unserved_tasks(threshold=60)
    assert (unserved.queue, unserved.task_name, unserved.runs) == ("default", "flakey", 2)
    # A worker of another queue does not serve it; one of this queue does.
    await client.store.register_worker("w2", "h", 1, ["other"], ["flakey"], 1, 3600)
    assert [u.task_name for u in await client.unserved_tasks(threshold=60)] == ["flakey"]
    await register(client, "w3", ["flakey"], ttl=3600)
    assert await client.unserved_tasks(threshold=60) == []


@dt.task("known")
async def known(ctx: dt.TaskContext, params: None) -> None:
    return None


async def test_a_worker_registers_itself_warns_of_unserved_work_and_leaves(
    client: dt.Durable, caplog: pytest.LogCaptureFixture
) -> None:
    client.register(known)
    await client.spawn_by_name("flakey", None)
    await advance_clock(client, timedelta(minutes=10))
    options = dt.WorkerOptions(worker_id="fleet-w", poll_interval=0.05)
    with caplog.at_level(logging.WARNING, logger="durable_trio.worker"):
        async with client.worker(options):
            with trio.fail_after(30):
                while not await client.workers():
                    await trio.sleep(0.01)
                while "flakey" not in caplog.text:
                    await trio.sleep(0.01)
            [me] = await client.workers()
            assert (me.worker_id, me.task_names, me.queues) == ("fleet-w", ["known"], ["default"])
    assert await client.workers() == []
    [record] = [r for r in caplog.records if "flakey" in r.getMessage()]
    assert "no live worker has registered that name" in record.getMessage()
    assert record.levelno == logging.WARNING
