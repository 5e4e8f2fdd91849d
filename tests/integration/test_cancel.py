"""Cancellation: by the client (pending, sleeping, running), and by CancellationPolicy
(max_pending_delay, max_duration). A cancelled task writes nothing more."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import pytest
import trio

import durable_trio as dt
from durable_trio.testing import advance_clock, reap_expired, run_until_idle
from support import fetch


async def run_states(client: dt.Durable, task_id: UUID) -> list[str]:
    rows = await fetch(
        client, "SELECT state FROM @s.runs WHERE task_id = %s ORDER BY attempt", task_id
    )
    return [r["state"] for r in rows]


async def checkpoint_names(client: dt.Durable, task_id: UUID) -> list[str]:
    rows = await fetch(
        client, "SELECT name FROM @s.checkpoints WHERE task_id = %s ORDER BY name", task_id
    )
    return [r["name"] for r in rows]


async def assert_cancelled(client: dt.Durable, task_id: UUID, reason: str) -> None:
    info = await client.get_task(task_id)
    assert info.state is dt.TaskState.CANCELLED
    assert info.cancel_reason == reason
    assert info.result is None
    assert info.finished_at is not None
    assert set(await run_states(client, task_id)) == {"cancelled"}
    with pytest.raises(dt.TaskCancelled) as caught:
        await client.wait_result(None, task_id, timeout=10)
    assert caught.value.reason == reason


@dt.task("napper")
async def napper(ctx: dt.TaskContext, seconds: float) -> str:
    await ctx.step("before", lambda: 1)
    await ctx.sleep_for("nap", seconds)
    await ctx.step("after", lambda: 2)
    return "woke"


async def test_cancel_pending_task(client: dt.Durable) -> None:
    client.register(napper)
    spawned = await client.spawn(napper, 0.0)
    assert await client.cancel(spawned.task_id, reason="changed my mind") is True
    await assert_cancelled(client, spawned.task_id, "changed my mind")
    assert await run_until_idle(client) == 0
    assert await checkpoint_names(client, spawned.task_id) == []
    # Already ended: a second cancel changes nothing.
    assert await client.cancel(spawned.task_id, reason="again") is False
    await assert_cancelled(client, spawned.task_id, "changed my mind")


async def test_cancel_unknown_task(client: dt.Durable) -> None:
    with pytest.raises(dt.TaskNotFound):
        await client.cancel(UUID(int=1))


async def test_cancel_sleeping_task(client: dt.Durable) -> None:
    client.register(napper)
    spawned = await client.spawn(napper, 3600.0)
    await run_until_idle(client)
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING
    assert await client.cancel(spawned.task_id) is True
    await assert_cancelled(client, spawned.task_id, "cancelled by client")
    await advance_clock(client, 7200)
    assert await run_until_idle(client) == 0
    assert await checkpoint_names(client, spawned.task_id) == ["$sleep:nap", "before"]


async def test_cancel_a_task_waiting_for_an_event(client: dt.Durable) -> None:
    @dt.task("listener")
    async def listener(ctx: dt.TaskContext, p: None) -> Any:
        return await ctx.await_event("ping")

    client.register(listener)
    spawned = await client.spawn(listener, None)
    await run_until_idle(client)
    assert await client.cancel(spawned.task_id) is True
    assert await fetch(client, "SELECT * FROM @s.waits") == []
    assert await client.emit_event("ping", 1) == 0
    assert await run_until_idle(client) == 0
    await assert_cancelled(client, spawned.task_id, "cancelled by client")
    assert await checkpoint_names(client, spawned.task_id) == []


class Blocked:
    """A task whose second step blocks until cancelled; it records what it sees."""

    def __init__(self) -> None:
        self.started = trio.Event()
        self.recorded = trio.Event()
        self.seen: list[str] = []

        @dt.task("blocked")
        async def blocked(ctx: dt.TaskContext, p: None) -> str:
            await ctx.step("first", lambda: 1)
            try:
                await ctx.step("block", self._block)
            except trio.Cancelled:
                self.seen.append("cancelled")
                # Misbehaving code that tries to keep writing: it is fenced.
                with trio.CancelScope(shield=True):
                    try:
                        await ctx.step("sneaky", lambda: 3)
                    except dt.LeaseLost:
                        self.seen.append("fenced")
                self.recorded.set()
                raise
            await ctx.step("after", lambda: 4)
            return "finished"

        self.task = blocked

    async def _block(self) -> int:
        self.started.set()
        await trio.sleep_forever()
        return 2  # pragma: no cover


async def cancel_running(
    client: dt.Durable,
    options: dt.WorkerOptions,
    monkeypatch: pytest.MonkeyPatch | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="durable_trio.worker")
    b = Blocked()
    client.register(b.task, napper)
    spawned = await client.spawn(b.task, None)
    worker = client.new_worker(options)
    if monkeypatch is not None:  # ignore notifications: only the heartbeat can help
        monkeypatch.setattr(worker, "_on_notify", lambda channel, payload: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(10):
            await b.started.wait()
        assert (await client.get_task(spawned.task_id)).state is dt.TaskState.RUNNING
        assert await client.cancel(spawned.task_id, reason="stop") is True
        with trio.fail_after(10):
            await b.recorded.wait()
        assert b.seen == ["cancelled", "fenced"]
        # The worker goes on: the slot is free and it runs other work.
        other = await client.spawn(napper, 0.0)
        assert await client.wait_result(napper, other.task_id, timeout=10) == "woke"
        # The client can see the commit before the worker has read its answer: the run
        # leaves the worker a moment later.
        with trio.fail_after(10):
            while worker.in_flight:
                await trio.sleep(0.005)
        worker.shutdown()
    await assert_cancelled(client, spawned.task_id, "stop")
    assert await checkpoint_names(client, spawned.task_id) == ["first"]
    assert await run_states(client, spawned.task_id) == ["cancelled"]
    # A deliberate cancel is news, not a warning.
    abandoned = [r for r in caplog.records if "abandoned" in r.getMessage()]
    assert [(r.levelname, r.getMessage().split(": ", 1)[1]) for r in abandoned] == [
        ("INFO", "task cancelled: stop")
    ]


async def test_cancel_running_task_through_notify(
    client: dt.Durable, caplog: pytest.LogCaptureFixture
) -> None:
    """The heartbeat is 200 s away: only the cancel NOTIFY can stop the step in time."""
    await cancel_running(
        client, dt.WorkerOptions(claim_timeout=600, poll_interval=30), None, caplog
    )


async def test_cancel_running_task_within_one_heartbeat(
    client: dt.Durable, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Notifications ignored: the next heartbeat (every 0.5 s) notices the cancel."""
    await cancel_running(
        client, dt.WorkerOptions(claim_timeout=1.5, poll_interval=0.05), monkeypatch, caplog
    )


async def test_max_pending_delay(client: dt.Durable) -> None:
    client.register(napper)
    policy = dt.SpawnOptions(cancellation=dt.CancellationPolicy(max_pending_delay=60))
    late = await client.spawn(napper, 0.0, options=policy)
    await advance_clock(client, 61)
    on_time = await client.spawn(napper, 0.0, options=policy)
    assert await run_until_idle(client) == 1
    await assert_cancelled(client, late.task_id, "max_pending_delay exceeded")
    assert await checkpoint_names(client, late.task_id) == []
    assert await client.wait_result(napper, on_time.task_id, timeout=10) == "woke"


async def test_max_pending_delay_does_not_apply_once_started(client: dt.Durable) -> None:
    client.register(napper)
    policy = dt.SpawnOptions(cancellation=dt.CancellationPolicy(max_pending_delay=60))
    spawned = await client.spawn(napper, 600.0, options=policy)
    await run_until_idle(client)
    await advance_clock(client, 601)  # woken far past the pending delay: still runs
    assert await run_until_idle(client) == 1
    assert await client.wait_result(napper, spawned.task_id, timeout=10) == "woke"


async def test_max_duration_cancels_a_task_that_slept_too_long(client: dt.Durable) -> None:
    client.register(napper)
    policy = dt.SpawnOptions(cancellation=dt.CancellationPolicy(max_duration=100))
    spawned = await client.spawn(napper, 200.0, options=policy)
    await run_until_idle(client)
    await advance_clock(client, 201)
    await run_until_idle(client)
    await assert_cancelled(client, spawned.task_id, "max_duration exceeded")
    assert "after" not in await checkpoint_names(client, spawned.task_id)


async def test_max_duration_allows_a_task_that_ends_in_time(client: dt.Durable) -> None:
    client.register(napper)
    policy = dt.SpawnOptions(cancellation=dt.CancellationPolicy(max_duration=100))
    spawned = await client.spawn(napper, 50.0, options=policy)
    await run_until_idle(client)
    await advance_clock(client, 51)
    await run_until_idle(client)
    assert await client.wait_result(napper, spawned.task_id, timeout=10) == "woke"


async def test_max_duration_cancels_a_task_that_runs_too_long(client: dt.Durable) -> None:
    started = trio.Event()
    proceed = trio.Event()
    recorded = trio.Event()
    seen: list[str] = []

    @dt.task("slowpoke")
    async def slowpoke(ctx: dt.TaskContext, p: None) -> str:
        async def work() -> int:
            started.set()
            await proceed.wait()
            try:
                await ctx.heartbeat()  # the lease renewal notices the overrun
                await trio.sleep_forever()
            except trio.Cancelled:
                seen.append("cancelled")
                recorded.set()
                raise
            return 1  # pragma: no cover

        await ctx.step("work", work)
        return "done"

    client.register(slowpoke)
    policy = dt.SpawnOptions(cancellation=dt.CancellationPolicy(max_duration=100))
    spawned = await client.spawn(slowpoke, None, options=policy)
    # A long lease: the clock jump below must not expire it, only overrun max_duration.
    async with client.worker(dt.WorkerOptions(claim_timeout=3600, poll_interval=30)):
        with trio.fail_after(10):
            await started.wait()
        await advance_clock(client, 101)
        proceed.set()
        with trio.fail_after(10):
            await recorded.wait()
    assert seen == ["cancelled"]
    await assert_cancelled(client, spawned.task_id, "max_duration exceeded")
    assert await checkpoint_names(client, spawned.task_id) == []


# -- deadlines of tasks no claim or heartbeat would look at -----------------------------


@dt.task("listener")
async def listener(ctx: dt.TaskContext, p: None) -> Any:
    return await ctx.await_event("never-sent")


@dt.task("forever_child")
async def forever_child(ctx: dt.TaskContext, p: None) -> Any:
    return await ctx.await_event("never-sent")


@dt.task("joiner")
async def joiner(ctx: dt.TaskContext, p: None) -> Any:
    handle = await ctx.spawn("kid", forever_child, None)
    return await ctx.join("kid", handle)


async def deadline_rows(client: dt.Durable, task_id: UUID) -> list[str]:
    rows = await fetch(
        client, "SELECT kind FROM @s.deadlines WHERE task_id = %s ORDER BY kind", task_id
    )
    return [r["kind"] for r in rows]


async def test_max_duration_cancels_a_task_waiting_for_an_event_without_timeout(
    client: dt.Durable,
) -> None:
    client.register(listener)
    policy = dt.SpawnOptions(cancellation=dt.CancellationPolicy(max_duration=3600))
    spawned = await client.spawn(listener, None, options=policy)
    await run_until_idle(client)
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING
    await advance_clock(client, 3599)
    await reap_expired(client)
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING
    await advance_clock(client, 2)
    await reap_expired(client)  # what every worker does on its reaping cadence
    await assert_cancelled(client, spawned.task_id, "max_duration exceeded")
    assert await deadline_rows(client, spawned.task_id) == []


async def test_max_duration_cancels_a_parent_joining_a_child_that_never_ends(
    client: dt.Durable,
) -> None:
    client.register(joiner, forever_child)
    policy = dt.SpawnOptions(cancellation=dt.CancellationPolicy(max_duration=600))
    spawned = await client.spawn(joiner, None, options=policy)
    await run_until_idle(client)
    (kid,) = await fetch(
        client, "SELECT task_id FROM @s.tasks WHERE parent_task_id = %s", spawned.task_id
    )
    await advance_clock(client, 601)
    await run_until_idle(client)  # its worker sweeps deadlines too
    await assert_cancelled(client, spawned.task_id, "max_duration exceeded")
    await assert_cancelled(client, kid["task_id"], f"parent {spawned.task_id} ended")


async def test_max_pending_delay_cancels_a_task_no_worker_can_run(client: dt.Durable) -> None:
    # Spawned, but registered with no worker: no claim ever looks at it.
    policy = dt.SpawnOptions(cancellation=dt.CancellationPolicy(max_pending_delay=60))
    spawned = await client.spawn(listener, None, options=policy)
    assert await deadline_rows(client, spawned.task_id) == ["max_pending_delay"]
    await advance_clock(client, 59)
    await reap_expired(client)
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.PENDING
    await advance_clock(client, 2)
    await reap_expired(client)
    await assert_cancelled(client, spawned.task_id, "max_pending_delay exceeded")


async def test_max_pending_delay_counts_from_when_a_delayed_spawn_is_due(
    client: dt.Durable,
) -> None:
    policy = dt.SpawnOptions(delay=600, cancellation=dt.CancellationPolicy(max_pending_delay=60))
    spawned = await client.spawn(listener, None, options=policy)
    await advance_clock(client, 100)  # past created + 60, but not yet due to start
    await reap_expired(client)
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.PENDING
    assert await deadline_rows(client, spawned.task_id) == ["max_pending_delay"]
    await advance_clock(client, 559)  # 659 s: due at 600, 59 s waiting
    await reap_expired(client)
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.PENDING
    await advance_clock(client, 2)
    await reap_expired(client)
    await assert_cancelled(client, spawned.task_id, "max_pending_delay exceeded")


async def test_deadlines_of_tasks_that_ended_in_time_are_forgotten(client: dt.Durable) -> None:
    client.register(napper)
    policy = dt.SpawnOptions(
        cancellation=dt.CancellationPolicy(max_pending_delay=60, max_duration=100)
    )
    spawned = await client.spawn(napper, 10.0, options=policy)
    assert await deadline_rows(client, spawned.task_id) == ["max_pending_delay"]
    await run_until_idle(client)
    assert await deadline_rows(client, spawned.task_id) == [
        "max_duration",
        "max_pending_delay",
    ]
    await advance_clock(client, 11)
    await run_until_idle(client)
    assert await client.wait_result(napper, spawned.task_id, timeout=10) == "woke"
    await advance_clock(client, 200)
    await reap_expired(client)
    assert await deadline_rows(client, spawned.task_id) == []
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.COMPLETED


async def test_tasks_without_a_policy_have_no_deadline_rows(client: dt.Durable) -> None:
    client.register(napper)
    spawned = await client.spawn(napper, 10.0)
    await run_until_idle(client)
    assert await deadline_rows(client, spawned.task_id) == []


async def test_one_sweep_forgets_every_stale_deadline(client: dt.Durable) -> None:
    # More stale rows than one sweep cancels at most (100): all go in one statement.
    client.register(napper)
    policy = dt.SpawnOptions(cancellation=dt.CancellationPolicy(max_pending_delay=60))
    spawned = await client.spawn_many(napper, [0.0] * 150, options=policy)
    assert await run_until_idle(client) == 150
    rows = await fetch(client, "SELECT count(*) AS n FROM @s.deadlines")
    assert rows[0]["n"] == 150  # started in time: stale once due
    await advance_clock(client, 61)
    await reap_expired(client)
    rows = await fetch(client, "SELECT count(*) AS n FROM @s.deadlines")
    assert rows[0]["n"] == 0
    for s in spawned[:3]:
        assert (await client.get_task(s.task_id)).state is dt.TaskState.COMPLETED


async def test_a_failing_deadline_sweep_does_not_stop_reaping(
    client: dt.Durable, caplog: pytest.LogCaptureFixture
) -> None:
    # E.g. grants not re-run after an upgrade: logged, and the sweep retried next time.
    await fetch(client, "DROP FUNCTION @s.enforce_deadlines(integer)")
    with caplog.at_level(logging.WARNING, logger="durable_trio.worker"):
        assert await reap_expired(client) == 0
    assert "deadline sweep failed" in caplog.text
    assert "enforce_deadlines" in caplog.text


async def test_a_cancel_found_by_the_last_heartbeat_before_a_stop_is_not_a_warning(
    client: dt.Durable, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker stops the moment the cancel is seen: a loss whose cause the stop kept
    it from looking up is not reported as a lost lease (a WARNING)."""
    caplog.set_level(logging.INFO, logger="durable_trio.worker")
    b = Blocked()
    client.register(b.task)
    spawned = await client.spawn(b.task, None)
    worker = client.new_worker(dt.WorkerOptions(claim_timeout=1.5, poll_interval=0.05))
    monkeypatch.setattr(worker, "_on_notify", lambda channel, payload: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(10):
            await b.started.wait()
        await client.cancel(spawned.task_id, reason="enough")
        with trio.fail_after(10):
            await b.recorded.wait()  # the heartbeat lost it: stop at once
        nursery.cancel_scope.cancel()
    abandoned = [r for r in caplog.records if "abandoned" in r.getMessage()]
    assert [r.levelname for r in abandoned] == ["INFO"]
    assert abandoned[0].getMessage().split(": ", 1)[1] in (
        "task cancelled: enough",  # the lookup of why finished before the stop
        "not renewed by the last heartbeat before the stop",
    )
