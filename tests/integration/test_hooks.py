"""Hooks: before_spawn adds headers (kept through retries, seen by children), around_run
wraps each attempt, around_step each step (replays marked), before_emit and before_cancel
see emits and cancels, in a documented order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import durable_trio as dt
from durable_trio.testing import run_until_idle

EVENTS: list[str] = []
SEEN_HEADERS: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    EVENTS.clear()
    SEEN_HEADERS.clear()


def before_spawn(call: dt.SpawnCall) -> dict[str, Any]:
    EVENTS.append(f"spawn {call.task_name} parent={call.parent_task_id is not None}")
    return {"trace": f"from-{call.task_name}", "given": call.headers.get("given")}


@asynccontextmanager
async def around_run(ctx: dt.TaskContext) -> AsyncIterator[None]:
    EVENTS.append(f"run {ctx.task_name} attempt={ctx.attempt} >")
    try:
        yield
    finally:
        EVENTS.append(f"run {ctx.task_name} <")


@asynccontextmanager
async def around_step(ctx: dt.TaskContext, call: dt.StepCall) -> AsyncIterator[None]:
    EVENTS.append(f"step {call.name} replayed={call.replayed} >")
    yield
    EVENTS.append(f"step {call.name} <")


HOOKS = dt.Hooks(before_spawn=before_spawn, around_run=around_run, around_step=around_step)


@dt.task("kid")
async def kid(ctx: dt.TaskContext, p: None) -> str:
    SEEN_HEADERS.append((ctx.task_name, ctx.headers))
    return "kid done"


@dt.task("parent")
async def parent(ctx: dt.TaskContext, p: None) -> str:
    SEEN_HEADERS.append((ctx.task_name, ctx.headers))
    await ctx.step("work", lambda: 1)
    if ctx.attempt == 1:
        raise RuntimeError("once")
    child = await ctx.spawn("kid", kid, None)
    return await ctx.join("kid-done", child)


async def test_hooks_wrap_spawns_runs_and_steps_in_order(pg_url: str, schema: str) -> None:
    async with dt.Durable.connect(pg_url, schema=schema, hooks=HOOKS) as client:
        client.register(parent, kid)
        options = dt.SpawnOptions(headers={"given": "by-caller"}, retry=dt.RetryStrategy.none())
        spawned = await client.spawn(parent, None, options=options)
        await run_until_idle(client)
        assert await client.wait_result(spawned) == "kid done"

    assert EVENTS == [
        "spawn parent parent=False",
        # attempt 1: the step runs, then the task fails
        "run parent attempt=1 >",
        "step work replayed=False >",
        "step work <",
        "run parent <",
        # attempt 2: the step replays (marked, nothing ran), the child is spawned
        "run parent attempt=2 >",
        "step work replayed=True >",
        "step work <",
        "spawn kid parent=True",
        "run parent <",  # suspended in the join
        "run kid attempt=1 >",
        "run kid <",
        "run parent attempt=2 >",  # resumed after the child ended
        "step work replayed=True >",
        "step work <",
        "run parent <",
    ]
    parents = [headers for name, headers in SEEN_HEADERS if name == "parent"]
    [kid_headers] = [headers for name, headers in SEEN_HEADERS if name == "kid"]
    assert parents == [{"given": "by-caller", "trace": "from-parent"}] * 3  # every attempt
    # The child starts from its parent's headers; the hook's come over them.
    assert kid_headers == {"given": "by-caller", "trace": "from-kid"}


async def test_before_spawn_on_the_blocking_client(pg_url: str, schema: str) -> None:
    import durable_trio.sync

    def run() -> dt.TaskInfo:
        with durable_trio.sync.Durable.connect(pg_url, schema=schema, hooks=HOOKS) as c:
            return c.get_task(c.spawn_by_name("kid", None).task_id)

    import trio

    info = await trio.to_thread.run_sync(run)
    assert info.headers == {"trace": "from-kid", "given": None}


async def test_a_bad_header_from_a_hook_is_refused_and_writes_nothing(
    pg_url: str, schema: str
) -> None:
    bad = dt.Hooks(before_spawn=lambda call: {"": 1})
    async with dt.Durable.connect(pg_url, schema=schema, hooks=bad) as client:
        with pytest.raises(dt.InvalidInput, match="header"):
            await client.spawn_by_name("kid", None)
        assert (await client.list_tasks()).items == []


@dt.task("shout")
async def shout(ctx: dt.TaskContext, p: None) -> None:
    EVENTS.append(f"shout resumed={ctx.resumed}")
    await ctx.emit_event("heard", 1)
    await ctx.sleep_for("rest", 60)  # resumed, it replays the first emit: nothing written
    await ctx.emit_event("heard", 2)


async def test_before_emit_and_before_cancel(pg_url: str, schema: str) -> None:
    calls: list[Any] = []
    hooks = dt.Hooks(before_emit=calls.append, before_cancel=calls.append)
    async with dt.Durable.connect(pg_url, schema=schema, hooks=hooks) as client:
        client.register(shout)
        spawned = await client.spawn(shout, None)
        await run_until_idle(client, skip_time=True)
        await client.emit_event("bell", queue="other")
        assert await client.cancel(spawned.task_id) is False  # it had ended: still told
    assert EVENTS == ["shout resumed=False", "shout resumed=True"]
    assert calls == [
        dt.EmitCall("heard", "default", spawned.task_id),
        dt.EmitCall("heard", "default", spawned.task_id),  # heard#2, not the replay
        dt.EmitCall("bell", "other", None),
        dt.CancelCall(spawned.task_id, "cancelled by client"),
    ]


@dt.task("ring")
async def ring(ctx: dt.TaskContext, p: None) -> None:
    await ctx.await_event("bell")


async def test_a_failing_before_hook_writes_nothing(pg_url: str, schema: str) -> None:
    def refuse(call: object) -> None:
        raise RuntimeError(f"refused {type(call).__name__}")

    hooks = dt.Hooks(before_emit=refuse, before_cancel=refuse)
    async with dt.Durable.connect(pg_url, schema=schema, hooks=hooks) as client:
        client.register(kid)
        pending = await client.spawn(kid, None)
        with pytest.raises(RuntimeError, match="refused CancelCall"):
            await client.cancel(pending.task_id)
        with pytest.raises(RuntimeError, match="refused EmitCall"):
            await client.emit_event("bell")
        assert (await client.get_task(pending.task_id)).state == "pending"
    async with dt.Durable.connect(pg_url, schema=schema) as plain:
        plain.register(ring)
        waiting = await plain.spawn(ring, None)
        await run_until_idle(plain)
        # No event was stored: the wait is still waiting, not answered at once.
        assert (await plain.get_task(waiting.task_id)).state != "completed"
        await plain.emit_event("bell")
        await run_until_idle(plain)
        assert (await plain.get_task(waiting.task_id)).state == "completed"


def test_hooks_must_be_hooks() -> None:
    with pytest.raises(dt.InvalidInput, match=r"hooks must be a durable_trio\.Hooks"):
        dt.Durable("postgresql://x/y", queue="q", schema="s", pool_size=1, hooks={"a": 1})  # type: ignore[arg-type]
