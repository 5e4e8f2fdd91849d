"""The SQL moves tasks between states exactly as `_core.states.transition` says.

Each task below is driven through the store's fenced functions (the same calls a worker
makes) and, after every event, the state read back from the database must be
``transition(before, event)``; events the table forbids must be refused by the SQL with
nothing changed. A last test drives real task code through a worker and checks that the
states observed between runs are reachable by the table's moves.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from uuid import UUID

import attrs
import pytest
import trio

import durable_trio as dt
from durable_trio._core.ids import uuid7
from durable_trio._core.states import (
    TERMINAL,
    TRANSITIONS,
    Event,
    IllegalTransition,
    TaskState,
    transition,
)
from durable_trio.testing import advance_clock, database_now, run_until_idle
from support import query

LEASE = 30.0
WORKER = "w1"


@attrs.define
class Tracked:
    name: str
    task_id: UUID
    run_id: UUID
    events: int = 0

    @property
    def event(self) -> str:
        return f"{self.name}-event-{self.events}"


class Driver:
    """Applies events to tasks and checks each against the transition table."""

    def __init__(self, client: dt.Durable) -> None:
        self.client = client
        self.store = client.store
        self.accepted: set[tuple[TaskState, Event]] = set()
        self.refused: set[tuple[TaskState, Event]] = set()
        self.count = 0

    async def spawn(self) -> Tracked:
        self.count += 1
        name = f"task{self.count}"
        spawned = await self.client.spawn_by_name(
            name, {}, options=dt.SpawnOptions(max_attempts=2, retry=dt.RetryStrategy.none())
        )
        t = Tracked(name, spawned.task_id, spawned.run_id)
        assert await self.observe(t) is TaskState.PENDING
        return t

    async def observe(self, t: Tracked) -> TaskState:
        """The task's state; its current (last) run must always agree with it."""
        (task,) = await query(
            self.client,
            "SELECT state, last_run_id, attempts, max_attempts FROM {schema}.tasks"
            " WHERE task_id = %s",
            t.task_id,
        )
        (run,) = await query(
            self.client,
            "SELECT state, attempt FROM {schema}.runs WHERE run_id = %s",
            task["last_run_id"],
        )
        assert run["state"] == task["state"]
        assert run["attempt"] == task["attempts"] <= task["max_attempts"]
        live = await query(
            self.client,
            "SELECT count(*) AS n FROM {schema}.runs WHERE task_id = %s"
            " AND state IN ('pending', 'running', 'sleeping')",
            t.task_id,
        )
        # At most one live run per task (invariant 3), and none once it is terminal.
        assert live[0]["n"] == (0 if TaskState(task["state"]) in TERMINAL else 1)
        t.run_id = task["last_run_id"]
        return TaskState(task["state"])

    async def act(
        self, t: Tracked, event: Event, *, reaper: bool = False, kind: str = "sleep"
    ) -> bool:
        """Ask the SQL for `event`; True if it took effect."""
        store, queue = self.store, self.client.queue
        if event is Event.CLAIM:
            rows = await store.claim(queue, WORKER, [t.name], 5, LEASE)
            assert [r.run_id for r in rows] in ([], [t.run_id])
            return bool(rows)
        if event is Event.SUSPEND:
            if kind == "sleep":
                wake = await database_now(self.client) + timedelta(seconds=60)
                return await store.suspend(t.run_id, WORKER, wake)
            t.events += 1  # a fresh event name: events are sticky
            outcome, _ = await store.await_event(
                t.run_id, WORKER, queue, t.event, f"$event:{t.event}", None
            )
            assert outcome in ("suspended", "fenced")
            return outcome == "suspended"
        if event is Event.WAKE:
            return await self.client.emit_event(t.event, {"n": t.events}) > 0
        if event is Event.COMPLETE:
            return await store.complete(t.run_id, WORKER, json.dumps("done"))
        if event in (Event.RETRY, Event.FAIL):
            state = await store.fail(
                t.run_id,
                None if reaper else WORKER,
                json.dumps({"type": "Boom", "message": "boom"}),
                retry=event is Event.RETRY,
                delay=0,
                new_run_id=uuid7(),
            )
            assert state in (None, "pending" if event is Event.RETRY else "failed")
            return state is not None
        if event is Event.RELEASE:
            return await store.release(t.run_id, WORKER)
        if event is Event.CANCEL:
            return await store.cancel(t.task_id, "test") > 0
        raise AssertionError(event)

    async def move(self, t: Tracked, event: Event, **kwargs: Any) -> TaskState:
        before = await self.observe(t)
        expected = transition(before, event)
        assert await self.act(t, event, **kwargs), f"SQL refused {event} from {before}"
        after = await self.observe(t)
        assert after is expected, f"{event} from {before}: table says {expected}, DB {after}"
        self.accepted.add((before, event))
        return after

    async def refuse(self, t: Tracked, event: Event) -> None:
        before = await self.observe(t)
        with pytest.raises(IllegalTransition):
            transition(before, event)
        snapshot = await self.snapshot(t)
        assert not await self.act(t, event), f"SQL accepted {event} from {before}"
        assert await self.snapshot(t) == snapshot
        self.refused.add((before, event))

    async def refuse_all_illegal(self, t: Tracked) -> None:
        state = await self.observe(t)
        for event in Event:
            if event not in TRANSITIONS[state]:
                await self.refuse(t, event)

    async def snapshot(self, t: Tracked) -> Any:
        return (
            await query(self.client, "SELECT * FROM {schema}.tasks WHERE task_id = %s", t.task_id),
            await query(
                self.client,
                "SELECT run_id, attempt, state, available_at::text, worker_id,"
                " lease_expires_at, wake_reason, error, claimed_at, finished_at"
                " FROM {schema}.runs WHERE task_id = %s ORDER BY attempt",
                t.task_id,
            ),
            await query(self.client, "SELECT * FROM {schema}.waits WHERE task_id = %s", t.task_id),
            await query(
                self.client,
                "SELECT name FROM {schema}.checkpoints WHERE task_id = %s ORDER BY name",
                t.task_id,
            ),
        )


async def test_every_transition_matches_the_table(client: dt.Durable) -> None:
    d = Driver(client)

    # claim, sleep, claim when due, wait for an event, wake, claim, complete.
    a = await d.spawn()
    await d.refuse_all_illegal(a)
    await d.move(a, Event.CLAIM)
    await d.refuse_all_illegal(a)
    await d.move(a, Event.SUSPEND, kind="sleep")
    await d.refuse_all_illegal(a)
    assert await d.act(a, Event.CLAIM) is False  # not due yet: still sleeping
    await advance_clock(client, 61)
    await d.move(a, Event.CLAIM)  # a due sleeper is claimed straight from sleeping
    await d.move(a, Event.SUSPEND, kind="event")
    await d.refuse_all_illegal(a)
    await d.move(a, Event.WAKE)
    await d.move(a, Event.CLAIM)
    await d.move(a, Event.COMPLETE)
    await d.refuse_all_illegal(a)
    info = await client.get_task(a.task_id)
    assert (info.result, info.attempts) == ("done", 1)

    # an attempt fails and is retried, then fails for good.
    b = await d.spawn()
    await d.move(b, Event.CLAIM)
    await d.move(b, Event.RETRY)
    assert (await client.get_task(b.task_id)).attempts == 2
    await d.refuse_all_illegal(b)
    await d.move(b, Event.CLAIM)
    await d.move(b, Event.FAIL)
    await d.refuse_all_illegal(b)

    # graceful release, then cancellation of a pending task.
    c = await d.spawn()
    await d.move(c, Event.CLAIM)
    await d.move(c, Event.RELEASE)
    assert (await client.get_task(c.task_id)).attempts == 1
    await d.move(c, Event.CLAIM)
    await d.move(c, Event.RELEASE)
    await d.move(c, Event.CANCEL)
    await d.refuse_all_illegal(c)

    # cancellation of a running task: its owner is fenced out afterwards.
    e = await d.spawn()
    await d.move(e, Event.CLAIM)
    await d.move(e, Event.CANCEL)
    await d.refuse_all_illegal(e)

    # cancellation of a sleeping task (durable sleep and event wait).
    for kind in ("sleep", "event"):
        f = await d.spawn()
        await d.move(f, Event.CLAIM)
        await d.move(f, Event.SUSPEND, kind=kind)
        await d.move(f, Event.CANCEL)
        await d.refuse_all_illegal(f)
    assert await query(client, "SELECT * FROM {schema}.waits") == []

    # the reaper's retry and failure after lease expiry.
    g = await d.spawn()
    await d.move(g, Event.CLAIM)
    await advance_clock(client, LEASE + 1)
    await d.move(g, Event.RETRY, reaper=True)
    await d.move(g, Event.CLAIM)
    await advance_clock(client, LEASE + 1)
    await d.move(g, Event.FAIL, reaper=True)

    legal = {(s, e) for s, moves in TRANSITIONS.items() for e in moves}
    assert d.accepted == legal  # every legal move was made by the SQL...
    illegal = {(s, e) for s in TaskState for e in Event} - legal
    assert d.refused == illegal  # ...and every illegal one refused


async def test_events_that_only_apply_to_owned_runs_are_refused_for_other_workers(
    client: dt.Durable,
) -> None:
    d = Driver(client)
    t = await d.spawn()
    await d.move(t, Event.CLAIM)
    before = await d.snapshot(t)
    store = client.store
    assert not await store.complete(t.run_id, "intruder", "1")
    assert not await store.release(t.run_id, "intruder")
    assert not await store.suspend(t.run_id, "intruder", await database_now(client))
    assert (
        await store.fail(t.run_id, "intruder", "{}", retry=True, delay=0, new_run_id=uuid7())
        is None
    )
    # The reaper may not fail a run whose lease is alive.
    assert await store.fail(t.run_id, None, "{}", retry=True, delay=0, new_run_id=uuid7()) is None
    assert await d.snapshot(t) == before


# -- the same moves made by real task code through a worker ------------------------------


GATE: dict[str, trio.Event] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    GATE.clear()


@dt.task("journey", options=dt.SpawnOptions(max_attempts=3, retry=dt.RetryStrategy.none()))
async def journey(ctx: dt.TaskContext, params: Any) -> str:
    await ctx.sleep_for("nap", 60)
    payload = await ctx.await_event("go")
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails after the wait")
    return f"arrived with {payload}"


def reachable(before: TaskState, after: TaskState, *paths: tuple[Event, ...]) -> bool:
    for path in paths:
        state = before
        try:
            for event in path:
                state = transition(state, event)
        except IllegalTransition:
            continue
        if state is after:
            return True
    return False


async def test_real_task_moves_through_the_table(client: dt.Durable) -> None:
    client.register(journey)
    spawned = await client.spawn(journey, None)

    async def state() -> TaskState:
        return (await client.get_task(spawned.task_id)).state

    async def story() -> str:
        rows = await query(
            client,
            "SELECT attempt, state, wake_reason, error FROM {schema}.runs WHERE task_id = %s"
            " ORDER BY attempt",
            spawned.task_id,
        )
        return f"seen={seen} runs={rows}"

    seen = [await state()]
    assert seen[-1] is TaskState.PENDING, await story()
    await run_until_idle(client)  # claim, sleep
    seen.append(await state())
    assert reachable(seen[-2], seen[-1], (Event.CLAIM, Event.SUSPEND)), await story()
    assert seen[-1] is TaskState.SLEEPING, await story()

    await advance_clock(client, 61)
    await run_until_idle(client)  # claim when due, then wait for "go"
    seen.append(await state())
    assert reachable(seen[-2], seen[-1], (Event.CLAIM, Event.SUSPEND)), await story()
    assert seen[-1] is TaskState.SLEEPING, await story()

    await client.emit_event("go", "ticket")  # wake
    seen.append(await state())
    assert reachable(seen[-2], seen[-1], (Event.WAKE,)), await story()
    assert seen[-1] is TaskState.PENDING, await story()

    await run_until_idle(client)  # claim, fail, retry; claim, replay, complete
    seen.append(await state())
    assert reachable(seen[-2], seen[-1], (Event.CLAIM, Event.RETRY, Event.CLAIM, Event.COMPLETE)), (
        await story()
    )
    assert seen[-1] is TaskState.COMPLETED, await story()
    assert await client.wait_result(journey, spawned.task_id, timeout=10) == "arrived with ticket"
    runs = await query(
        client,
        "SELECT attempt, state, wake_reason FROM {schema}.runs WHERE task_id = %s ORDER BY attempt",
        spawned.task_id,
    )
    assert [(r["attempt"], r["state"]) for r in runs] == [(1, "failed"), (2, "completed")]


async def blocked(ctx: dt.TaskContext) -> None:
    GATE["in"].set()
    try:
        await trio.sleep_forever()
    finally:
        GATE["out"].set()


@dt.task("stuck", options=dt.SpawnOptions(max_attempts=2))
async def stuck(ctx: dt.TaskContext, params: Any) -> None:
    await ctx.step("block", blocked, ctx)


async def test_real_task_release_and_cancel_through_a_worker(client: dt.Durable) -> None:
    client.register(stuck)
    spawned = await client.spawn(stuck, None)

    async def state() -> TaskState:
        return (await client.get_task(spawned.task_id)).state

    # running -> release (graceful shutdown) -> pending
    GATE["in"], GATE["out"] = trio.Event(), trio.Event()
    worker = client.new_worker(dt.WorkerOptions(shutdown_grace=0, poll_interval=0.05))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await GATE["in"].wait()
            assert await state() is transition(TaskState.PENDING, Event.CLAIM)
            worker.shutdown()
    assert await state() is transition(TaskState.RUNNING, Event.RELEASE)

    # running -> cancel -> cancelled, and the worker's cancel scope fires.
    GATE["in"], GATE["out"] = trio.Event(), trio.Event()
    worker = client.new_worker(dt.WorkerOptions(poll_interval=0.05))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await GATE["in"].wait()
            assert await client.cancel(spawned.task_id, "enough")
            assert await state() is transition(TaskState.RUNNING, Event.CANCEL)
            # The worker hears the cancel notification and cancels the step's scope.
            await GATE["out"].wait()
            worker.shutdown()
    info = await client.get_task(spawned.task_id)
    assert info.state is TaskState.CANCELLED
    assert info.cancel_reason == "enough"
    assert info.attempts == 1
    with pytest.raises(dt.TaskCancelled):
        await client.wait_result(stuck, spawned.task_id, timeout=10)
