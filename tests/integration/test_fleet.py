"""The workers registry: live workers, expiry, and due work that no live worker serves."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import trio

import durable_trio as dt
from durable_trio.testing import advance_clock, run_until_idle


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


async def test_queue_stats_counts_due_runs_of_names_no_live_worker_has(
    client: dt.Durable,
) -> None:
    await register(client, "w1", ["known"], ttl=3600)
    await client.spawn_by_name("known", None)
    await client.spawn_by_name("flakey", None)
    await client.spawn_by_name("flakey", None)
    await client.spawn_by_name("later", None, options=dt.SpawnOptions(delay=7200))
    await client.spawn_by_name("flakey", None, options=dt.SpawnOptions(queue="other"))
    fresh = await client.queue_stats(unserved_after=60)
    assert (fresh.unserved_runs, fresh.oldest_unserved_age) == (0, None)
    assert fresh.unserved_after == timedelta(seconds=60)
    assert not any(s.unserved for s in fresh.by_name)

    await advance_clock(client, 120)
    stats = await client.queue_stats(unserved_after=60)
    by_name = {(s.queue, s.task_name): s for s in stats.by_name}
    flakey = by_name["default", "flakey"]
    assert (flakey.unserved, flakey.unserved_runs) == (True, 2)
    assert flakey.oldest_unserved_age is not None
    assert timedelta(seconds=120) <= flakey.oldest_unserved_age < timedelta(seconds=600)
    assert by_name["other", "flakey"].unserved_runs == 1  # w1 is not a worker of "other"
    assert (by_name["default", "known"].unserved_runs, by_name["default", "later"].unserved) == (
        0,
        False,
    )
    assert by_name["default", "known"].oldest_unserved_age is None
    assert stats.unserved_runs == 3
    assert stats.oldest_unserved_age == flakey.oldest_unserved_age
    assert (await client.queue_stats("other", unserved_after=60)).unserved_runs == 1
    assert (await client.queue_stats(unserved_after=600)).unserved_runs == 0

    # A worker of the queue that registers the name serves it; one that expired does not.
    await register(client, "w3", ["flakey"], ttl=30)
    assert (await client.queue_stats("default", unserved_after=60)).unserved_runs == 0
    await advance_clock(client, 3000)  # w3's row expires, w1's does not
    late = await client.queue_stats("default", unserved_after=60)
    assert {s.task_name: s.unserved_runs for s in late.by_name} == {
        "known": 0,
        "flakey": 2,
        "later": 0,
    }


async def test_queue_stats_refuses_a_bad_unserved_after(client: dt.Durable) -> None:
    with pytest.raises(dt.InvalidInput, match="unserved_after"):
        await client.queue_stats(unserved_after=-1)


@dt.task("napper")
async def napper(ctx: dt.TaskContext, params: None) -> None:
    await ctx.sleep_for("nap", 100)


async def test_a_sleeper_past_its_wake_time_is_due_and_can_be_unserved(
    client: dt.Durable,
) -> None:
    client.register(napper)
    await client.spawn(napper, None)
    await run_until_idle(client)  # suspended in its sleep; no worker is left
    await advance_clock(client, 1000)
    [gap] = await client.unserved_tasks(threshold=60)
    assert (gap.task_name, gap.runs) == ("napper", 1)
    stats = await client.queue_stats(unserved_after=60)
    assert (stats.sleeping, stats.due_now, stats.unserved_runs) == (1, 1, 1)
