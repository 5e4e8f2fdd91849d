"""The inspection API: list_tasks (filters, keyset pages), get_task's attempts, waits,
children and headers, steps, and queue_stats."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
import trio

import durable_trio as dt
from durable_trio.testing import advance_clock, database_now, run_until_idle
from support import fetch

ONCE = dt.SpawnOptions(max_attempts=1)


@dt.task("noop")
async def noop(ctx: dt.TaskContext, x: int) -> int:
    return x


@dt.task("other")
async def other(ctx: dt.TaskContext, x: int) -> int:
    return x


@dt.task("boom")
async def boom(ctx: dt.TaskContext, x: int) -> int:
    await ctx.step("fine", lambda: {"x": x})
    raise RuntimeError(f"boom {x}")


async def all_pages(client: dt.Durable, **filters: Any) -> list[list[UUID]]:
    pages: list[list[UUID]] = []
    after = None
    while True:
        page = await client.list_tasks(after=after, **filters)
        pages.append([t.task_id for t in page.items])
        if page.next_after is None:
            return pages
        assert page.next_after == page.items[-1].task_id
        after = page.next_after


def flat(pages: list[list[UUID]]) -> list[UUID]:
    return list(itertools.chain.from_iterable(pages))


async def ids_where(client: dt.Durable, where: str, *args: Any) -> list[UUID]:
    rows = await fetch(
        client, f"SELECT task_id FROM @s.tasks WHERE {where} ORDER BY task_id", *args
    )
    return [r["task_id"] for r in rows]


async def test_pages_follow_each_other_with_filters(client: dt.Durable) -> None:
    client.register(noop, other)
    for i in range(7):
        await client.spawn(noop, i)
        await client.spawn(other, i)
        await client.spawn(noop, i, options=dt.SpawnOptions(queue="elsewhere"))
    noops = await ids_where(client, "task_name = 'noop' AND queue = 'default'")
    assert await all_pages(client, queue="default", name="noop", limit=3) == [
        noops[0:3],
        noops[3:6],
        noops[6:7],
    ]
    # Exactly a page's worth: no empty page after it.
    assert await all_pages(client, queue="default", name="noop", limit=7) == [noops]
    everything = await ids_where(client, "true")
    assert flat(await all_pages(client, limit=4)) == everything
    assert flat(await all_pages(client, name="noop", limit=5)) == await ids_where(
        client, "task_name = 'noop'"
    )
    page = await client.list_tasks(queue="elsewhere", limit=2)
    assert [t.queue for t in page.items] == ["elsewhere", "elsewhere"]
    first = page.items[0]
    assert first.task_name == "noop"
    assert first.state is dt.TaskState.PENDING
    assert (first.attempts, first.max_attempts, first.parent_task_id) == (1, 5, None)


async def test_state_filters_pages_of_failed_and_pending(client: dt.Durable) -> None:
    client.register(noop, boom)
    # Sorted: ids made in the same millisecond are in random order. Some fail twice (two
    # failed runs, listed once); one fails once, then waits (not listed as failed).
    twice = dt.SpawnOptions(max_attempts=2, retry=dt.RetryStrategy.fixed(0))
    failing = sorted(
        [(await client.spawn(boom, i, options=ONCE if i % 2 else twice)).task_id for i in range(5)]
    )
    client.register(flaky_waiter)
    await client.spawn(flaky_waiter, 1, options=twice)
    done = sorted([(await client.spawn(noop, i)).task_id for i in range(3)])
    await run_until_idle(client)
    waiting = sorted([(await client.spawn(noop, i)).task_id for i in range(4)])
    cancelled = (await client.spawn(noop, 99)).task_id
    await client.cancel(cancelled)

    assert await all_pages(client, state="failed", limit=2) == [
        failing[0:2],
        failing[2:4],
        failing[4:5],
    ]
    assert flat(await all_pages(client, state=dt.TaskState.PENDING, limit=3)) == waiting
    assert flat(await all_pages(client, state="completed", limit=2)) == done
    assert flat(await all_pages(client, state="cancelled")) == [cancelled]
    assert await all_pages(client, state="failed", name="noop") == [[]]
    assert flat(await all_pages(client, state="failed", queue="default", limit=4)) == failing
    page = await client.list_tasks(state="failed", limit=1)
    assert page.items[0].finished_at is not None


async def test_created_range_and_parent(client: dt.Durable) -> None:
    @dt.task("parent")
    async def parent(ctx: dt.TaskContext, n: int) -> int:
        for i in range(n):
            await ctx.spawn(f"kid{i}", noop, i)
        return n

    client.register(parent, noop)
    old = sorted([(await client.spawn(noop, i)).task_id for i in range(3)])
    await advance_clock(client, 3600)
    middle = await database_now(client)
    dad = (await client.spawn(parent, 5)).task_id
    await run_until_idle(client)
    await advance_clock(client, 3600)
    late = [(await client.spawn(noop, i)).task_id for i in range(2)]
    kids = await ids_where(client, "parent_task_id = %s", dad)
    assert len(kids) == 5

    assert flat(await all_pages(client, created_before=middle, limit=2)) == old
    after_middle = flat(await all_pages(client, created_after=middle, limit=2))
    assert after_middle == sorted([dad, *kids, *late])
    window = flat(
        await all_pages(
            client, created_after=middle, created_before=middle + timedelta(seconds=1800)
        )
    )
    assert window == sorted([dad, *kids])
    assert await all_pages(client, parent=dad, limit=2) == [kids[0:2], kids[2:4], kids[4:5]]
    assert flat(await all_pages(client, parent=dad, state="completed")) == kids
    assert (await client.list_tasks(parent=dad)).items[0].parent_task_id == dad


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"limit": 0}, "limit must be an integer from 1 to 1000"),
        ({"limit": 1001}, "limit must be"),
        ({"limit": True}, "limit must be"),
        ({"state": "done"}, "state must be a TaskState or one of"),
        ({"queue": "Bad Queue"}, "queue name 'Bad Queue' is invalid"),
        ({"name": ""}, "task name must be 1 to"),
        ({"created_after": datetime(2026, 1, 1)}, "created_after must be timezone-aware"),
        ({"created_before": "yesterday"}, "created_before must be a datetime"),
        ({"parent": "nope"}, "parent must be a UUID"),
        ({"after": 12}, "after must be a UUID"),
    ],
)
async def test_list_tasks_refuses_bad_filters(
    client: dt.Durable, filters: dict[str, Any], message: str
) -> None:
    with pytest.raises(dt.InvalidInput, match=message):
        await client.list_tasks(**filters)


@dt.task("flaky_waiter")
async def flaky_waiter(ctx: dt.TaskContext, x: int) -> str:
    await ctx.step("prepared", lambda: x + 1)
    if ctx.attempt == 1:
        raise ValueError("first attempt breaks")
    got = await ctx.await_event("go", timeout=600)
    return str(got)


async def test_get_task_shows_attempts_errors_wait_and_headers(client: dt.Durable) -> None:
    client.register(flaky_waiter)
    options = dt.SpawnOptions(
        headers={"tenant": "acme"}, retry=dt.RetryStrategy.fixed(30), max_attempts=3
    )
    spawned = await client.spawn(flaky_waiter, 1, options=options)
    await run_until_idle(client)

    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.PENDING
    assert info.headers == {"tenant": "acme"}
    first, second = info.runs
    assert (first.attempt, first.state, second.attempt, second.state) == (
        1,
        dt.TaskState.FAILED,
        2,
        dt.TaskState.PENDING,
    )
    assert first.worker_id is not None
    assert first.claimed_at is not None
    assert first.finished_at is not None
    assert first.error is not None
    assert first.error.type == "builtins.ValueError"
    assert first.error.message == "first attempt breaks"
    assert first.error.traceback is not None
    assert "first attempt breaks" in first.error.traceback
    assert second.error is None
    assert second.worker_id is None
    # The retry's backoff: not runnable before its wake time.
    assert isinstance(info.waiting_for, dt.WaitingForTime)
    assert info.waiting_for.reason == "retry"
    assert info.waiting_for.wake_at == second.available_at

    await advance_clock(client, 31)
    await run_until_idle(client)
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.SLEEPING
    wait = info.waiting_for
    assert isinstance(wait, dt.WaitingForEvent)
    assert (wait.queue, wait.event_name, wait.step) == ("default", "go", "$event:go")
    now = await database_now(client)
    assert wait.timeout_at is not None
    assert timedelta(seconds=590) < wait.timeout_at - now <= timedelta(seconds=600)
    assert info.children == []
    assert info.child_count == 0

    await client.emit_event("go", "yes")
    await run_until_idle(client)
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.COMPLETED
    assert info.waiting_for is None
    assert [r.state for r in info.runs] == [dt.TaskState.FAILED, dt.TaskState.COMPLETED]


async def test_get_task_shows_sleeps_joins_and_children(client: dt.Durable) -> None:
    @dt.task("sleeper")
    async def sleeper(ctx: dt.TaskContext, x: int) -> int:
        await ctx.sleep_for("nap", 100)
        return x

    @dt.task("family")
    async def family(ctx: dt.TaskContext, n: int) -> int:
        handles = [await ctx.spawn(f"kid{i}", sleeper, i) for i in range(n)]
        total = 0
        for i, handle in enumerate(handles):
            total += await ctx.join(f"kid{i}", handle)
        return total

    client.register(sleeper, family)
    spawned = await client.spawn(family, 3)
    await run_until_idle(client)

    info = await client.get_task(spawned.task_id)
    kids = await ids_where(client, "parent_task_id = %s", spawned.task_id)
    assert info.child_count == 3
    assert [(c.task_id, c.task_name, c.state) for c in info.children] == [
        (kid, "sleeper", dt.TaskState.SLEEPING) for kid in kids
    ]
    joined = info.waiting_for
    assert isinstance(joined, dt.WaitingForChild)
    first_kid = (await client.steps(spawned.task_id))[0].value["task_id"]
    assert joined.task_id == UUID(first_kid)
    assert joined.step == "$join:kid0"

    kid = await client.get_task(UUID(first_kid))
    nap = kid.waiting_for
    assert isinstance(nap, dt.WaitingForTime)
    assert nap.reason == "sleep"
    assert nap.wake_at - await database_now(client) <= timedelta(seconds=100)
    assert kid.parent_task_id == spawned.task_id

    await advance_clock(client, 101)
    await run_until_idle(client)
    assert await client.wait_result(None, spawned.task_id, timeout=10) == 3


async def test_get_task_delayed_start_and_missing(client: dt.Durable) -> None:
    client.register(noop)
    spawned = await client.spawn(noop, 1, options=dt.SpawnOptions(delay=60))
    wait = (await client.get_task(spawned.task_id)).waiting_for
    assert isinstance(wait, dt.WaitingForTime)
    assert wait.reason == "start"
    now = await client.spawn(noop, 2)
    assert (await client.get_task(now.task_id)).waiting_for is None
    with pytest.raises(dt.TaskNotFound):
        await client.get_task(uuid4())
    with pytest.raises(dt.InvalidInput, match="task_id must be a UUID"):
        await client.get_task("nope")  # type: ignore[arg-type]


async def test_steps_lists_checkpoints_with_values_and_attempts(client: dt.Durable) -> None:
    @dt.task("stepper")
    async def stepper(ctx: dt.TaskContext, x: int) -> int:
        await ctx.step("load", lambda: {"rows": [1, 2, x]})
        await ctx.step("load", lambda: "again")
        if ctx.attempt == 1:
            raise RuntimeError("once")
        await ctx.uuid7()
        await ctx.sleep_for("rest", 0)
        return x

    client.register(stepper)
    spawned = await client.spawn(
        stepper, 3, options=dt.SpawnOptions(retry=dt.RetryStrategy.fixed(0))
    )
    await run_until_idle(client)
    assert await client.wait_result(stepper, spawned.task_id, timeout=10) == 3
    runs = (await client.get_task(spawned.task_id)).runs

    steps = await client.steps(spawned.task_id)
    assert [(s.checkpoint, s.kind, s.name) for s in steps[:2]] == [
        ("load", "step", "load"),
        ("load#2", "step", "load#2"),
    ]
    # The uuid7 is written first, unless the writer batches it with the sleep (one
    # transaction, one time): then they are ordered by name.
    assert [(s.checkpoint, s.kind, s.name) for s in steps[2:]] in (
        [("$uuid7:", "uuid7", ""), ("$sleep:rest", "sleep", "rest")],
        [("$sleep:rest", "sleep", "rest"), ("$uuid7:", "uuid7", "")],
    )
    assert steps[0].value == {"rows": [1, 2, 3]}
    assert steps[1].value == "again"
    assert [s.attempt for s in steps] == [1, 1, 2, 2]
    assert [s.run_id for s in steps] == [runs[0].run_id] * 2 + [runs[1].run_id] * 2
    assert all(a.created_at <= b.created_at for a, b in itertools.pairwise(steps))

    fresh = await client.spawn(stepper, 4)
    assert await client.steps(fresh.task_id) == []
    with pytest.raises(dt.TaskNotFound):
        await client.steps(uuid4())


async def test_a_repeats_name_is_its_stored_name(client: dt.Durable) -> None:
    """docs/operations.md: `name` keeps a repeat's `#N`. It cannot be stripped: a step
    the code named ``a#2`` is stored exactly as the second ``a`` would be, and a second
    ``a`` after it is numbered past it (``a#3``)."""

    @dt.task("repeats")
    async def repeats(ctx: dt.TaskContext, second: str) -> None:
        await ctx.step("a", lambda: 1)
        await ctx.step(second, lambda: 2)
        await ctx.step("a", lambda: 3)

    client.register(repeats)
    twice = await client.spawn(repeats, "a")
    named = await client.spawn(repeats, "a#2")
    await run_until_idle(client)
    shown = [
        [(s.checkpoint, s.name, s.value) for s in await client.steps(t.task_id)]
        for t in (twice, named)
    ]
    assert shown[0] == [("a", "a", 1), ("a#2", "a#2", 2), ("a#3", "a#3", 3)]
    assert shown[1] == shown[0]  # the rows cannot tell the two tasks apart


async def test_queue_stats_counts_backlog_lag_and_failures(client: dt.Durable) -> None:
    @dt.task("napper")
    async def napper(ctx: dt.TaskContext, x: int) -> int:
        await ctx.sleep_for("nap", 1000)
        return x

    client.register(napper, boom)
    for i in range(2):
        await client.spawn(napper, i)
    twice = dt.SpawnOptions(max_attempts=2, retry=dt.RetryStrategy.fixed(0))
    await client.spawn(boom, 1, options=twice)
    await run_until_idle(client)  # two sleeping, one failed (after two attempts)
    await client.spawn(noop, 1)
    await client.spawn(noop, 2, options=dt.SpawnOptions(delay=50))
    await client.spawn(noop, 3, options=dt.SpawnOptions(queue="other_q"))
    await client.cancel((await client.spawn(noop, 4)).task_id)
    await advance_clock(client, 10)

    stats = await client.queue_stats("default")
    assert stats.queue == "default"
    assert (stats.pending, stats.sleeping, stats.running, stats.due_now) == (2, 2, 0, 1)
    assert stats.oldest_due_age is not None
    assert timedelta(seconds=10) <= stats.oldest_due_age < timedelta(seconds=60)
    assert (stats.failed, stats.cancelled, stats.failed_attempts) == (1, 1, 2)
    assert stats.counts[dt.TaskState.SLEEPING] == 2
    by_name = {s.task_name: s for s in stats.by_name}
    assert set(by_name) == {"napper", "boom", "noop"}
    assert (by_name["noop"].pending, by_name["noop"].due_now) == (2, 1)
    assert (by_name["noop"].cancelled, by_name["boom"].failed) == (1, 1)
    assert by_name["napper"].sleeping == 2
    assert by_name["napper"].oldest_due_age is None

    everywhere = await client.queue_stats()
    assert everywhere.queue is None
    assert (everywhere.pending, everywhere.due_now) == (3, 2)
    assert {(s.queue, s.task_name) for s in everywhere.by_name} >= {("other_q", "noop")}

    # Failures leave the window; sleepers come due.
    await advance_clock(client, 3600)
    later = await client.queue_stats("default")
    assert (later.failed, later.cancelled, later.failed_attempts) == (0, 0, 0)
    assert later.due_now == 4
    assert (await client.queue_stats("default", window=7200)).failed == 1
    assert (await client.queue_stats("nobody_here")).by_name == []


async def test_queue_stats_refuses_bad_input(client: dt.Durable) -> None:
    with pytest.raises(dt.InvalidInput, match="queue name"):
        await client.queue_stats("No")
    with pytest.raises(dt.InvalidInput, match="window"):
        await client.queue_stats(window=-1)


async def test_a_running_task_in_lists_stats_and_details(client: dt.Durable) -> None:
    release = trio.Event()

    @dt.task("busy")
    async def busy(ctx: dt.TaskContext, x: int) -> int:
        await release.wait()
        return x

    @dt.task("napper")
    async def napper(ctx: dt.TaskContext, x: int) -> int:
        await ctx.sleep_for("nap", 1000)
        return x

    client.register(busy, napper)
    naps = sorted([(await client.spawn(napper, i)).task_id for i in range(3)])
    await run_until_idle(client)
    spawned = await client.spawn(busy, 1)
    async with client.worker(dt.WorkerOptions(poll_interval=0.05)):
        with trio.fail_after(10):
            while (await client.get_task(spawned.task_id)).state is not dt.TaskState.RUNNING:
                await trio.sleep(0.01)
        running = await client.list_tasks(state="running")
        assert [t.task_id for t in running.items] == [spawned.task_id]
        assert (await client.list_tasks(state="running", name="napper")).items == []
        stats = await client.queue_stats()
        assert (stats.running, stats.sleeping, stats.pending) == (1, 3, 0)
        run = (await client.get_task(spawned.task_id)).runs[-1]
        assert run.worker_id is not None
        assert run.lease_expires_at is not None
        assert run.claimed_at is not None
        release.set()
        assert await client.wait_result(busy, spawned.task_id, timeout=10) == 1
    assert await all_pages(client, state="sleeping", name="napper", limit=2) == [
        naps[0:2],
        naps[2:3],
    ]
    assert await all_pages(client, state="sleeping", name="busy") == [[]]
