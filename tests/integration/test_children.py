"""Child tasks: spawn + join, replay safety, ChildFailed / ChildCancelled, and the
cancellation of every descendant when a parent fails or is cancelled."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import attrs
import pytest

import durable_trio as dt
from durable_trio.testing import advance_clock, run_until_idle
from support import fetch


async def children_of(client: dt.Durable, parent: UUID) -> list[dict[str, Any]]:
    return await fetch(
        client,
        "SELECT task_id, task_name, state, cancel_reason, root_task_id FROM @s.tasks"
        " WHERE parent_task_id = %s",
        parent,
    )


async def run_states(client: dt.Durable, task_id: UUID) -> list[str]:
    rows = await fetch(
        client, "SELECT state FROM @s.runs WHERE task_id = %s ORDER BY attempt", task_id
    )
    return [r["state"] for r in rows]


@attrs.frozen
class ChildIn:
    x: int
    nap: float = 0


@attrs.frozen
class ChildOut:
    doubled: int


@attrs.frozen
class ParentOut:
    child: ChildOut
    bodies: int


@dt.task("child")
async def child(ctx: dt.TaskContext, p: ChildIn) -> ChildOut:
    if p.nap:
        await ctx.sleep_for("nap", p.nap)
    return ChildOut(await ctx.step("double", lambda: p.x * 2))


def make_parent(bodies: list[int]) -> dt.TaskDefinition[ChildIn, ParentOut]:
    @dt.task("parent")
    async def parent(ctx: dt.TaskContext, p: ChildIn) -> ParentOut:
        bodies.append(1)
        handle = await ctx.spawn("kid", child, p)
        await ctx.sleep_for("one", 10)
        await ctx.sleep_for("two", 10)
        out = await ctx.join("kid", handle)
        assert isinstance(out, ChildOut)
        return ParentOut(out, len(bodies))

    return parent


async def test_spawn_join_typed_result_and_one_child_across_replays(
    client: dt.Durable,
) -> None:
    bodies: list[int] = []
    parent = make_parent(bodies)
    client.register(parent, child)
    spawned = await client.spawn(parent, ChildIn(21, nap=100))

    await run_until_idle(client)  # parent spawns, sleeps; child starts and sleeps
    (kid,) = await children_of(client, spawned.task_id)
    assert kid["task_name"] == "child"
    assert kid["state"] == "sleeping"
    assert kid["root_task_id"] == spawned.task_id

    await advance_clock(client, 11)
    await run_until_idle(client)  # parent replays, sleeps again
    await advance_clock(client, 11)
    await run_until_idle(client)  # parent replays, joins the unfinished child: suspends
    assert len(bodies) == 3
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING
    assert await run_states(client, spawned.task_id) == ["sleeping"]
    (wait,) = await fetch(
        client, "SELECT event_name FROM @s.waits WHERE task_id = %s", spawned.task_id
    )
    assert wait["event_name"] == f"$task:{kid['task_id']}"
    assert len(await children_of(client, spawned.task_id)) == 1

    await advance_clock(client, 100)  # the child wakes, ends, and wakes the parent
    await run_until_idle(client)
    result = await client.wait_result(parent, spawned.task_id, timeout=10)
    assert result == ParentOut(ChildOut(42), bodies=4)
    (kid,) = await children_of(client, spawned.task_id)
    assert kid["state"] == "completed"
    assert await run_states(client, spawned.task_id) == ["completed"]


async def test_join_of_a_finished_child_does_not_suspend(client: dt.Durable) -> None:
    bodies: list[int] = []
    parent = make_parent(bodies)
    client.register(parent, child)
    spawned = await client.spawn(parent, ChildIn(5))
    await run_until_idle(client)
    (kid,) = await children_of(client, spawned.task_id)
    assert kid["state"] == "completed"
    await advance_clock(client, 11)
    await run_until_idle(client)
    await advance_clock(client, 11)
    assert await run_until_idle(client) == 1  # the parent alone, straight to the end
    assert await client.wait_result(parent, spawned.task_id, timeout=10) == ParentOut(
        ChildOut(10), bodies=3
    )


async def test_child_by_name_and_several_children(client: dt.Durable) -> None:
    @dt.task("fanout")
    async def fanout(ctx: dt.TaskContext, n: int) -> list[Any]:
        handles = [await ctx.spawn("c", "child", {"x": i}) for i in range(n)]
        return [await ctx.join("c", h) for h in handles]

    client.register(fanout, child)
    spawned = await client.spawn(fanout, 3)
    await run_until_idle(client)
    # Spawned by name: the join returns plain JSON.
    assert await client.wait_result(fanout, spawned.task_id, timeout=10) == [
        {"doubled": 0},
        {"doubled": 2},
        {"doubled": 4},
    ]
    assert len(await children_of(client, spawned.task_id)) == 3


@dt.task("doomed", options=dt.SpawnOptions(max_attempts=2, retry=dt.RetryStrategy.none()))
async def doomed(ctx: dt.TaskContext, p: None) -> int:
    raise RuntimeError(f"doomed attempt {ctx.attempt}")


async def test_child_failed_is_raised_in_the_parent(client: dt.Durable) -> None:
    @dt.task("forgiving")
    async def forgiving(ctx: dt.TaskContext, p: None) -> dict[str, Any]:
        handle = await ctx.spawn("kid", doomed, None)
        try:
            await ctx.join("kid", handle)
        except dt.ChildFailed as ex:
            return {
                "same_child": ex.task_id == handle.task_id,
                "type": ex.error["type"],
                "message": ex.error["message"],
            }
        return {}

    client.register(forgiving, doomed)
    spawned = await client.spawn(forgiving, None)
    await run_until_idle(client)
    assert await client.wait_result(forgiving, spawned.task_id, timeout=10) == {
        "same_child": True,
        "type": "builtins.RuntimeError",
        "message": "doomed attempt 2",
    }
    (kid,) = await children_of(client, spawned.task_id)
    assert kid["state"] == "failed"


async def test_uncaught_child_failed_fails_the_parent(client: dt.Durable) -> None:
    @dt.task("strict", options=dt.SpawnOptions(max_attempts=1))
    async def strict(ctx: dt.TaskContext, p: None) -> int:
        handle = await ctx.spawn("kid", doomed, None)
        return int(await ctx.join("kid", handle))

    client.register(strict, doomed)
    spawned = await client.spawn(strict, None)
    await run_until_idle(client)
    with pytest.raises(dt.TaskFailed) as info:
        await client.wait_result(strict, spawned.task_id, timeout=10)
    assert info.value.error["type"] == "durable_trio._errors.ChildFailed"


async def test_child_cancelled_is_raised_in_the_parent(client: dt.Durable) -> None:
    @dt.task("watcher")
    async def watcher(ctx: dt.TaskContext, p: None) -> str:
        handle = await ctx.spawn("kid", child, ChildIn(1, nap=3600))
        try:
            await ctx.join("kid", handle)
        except dt.ChildCancelled as ex:
            return f"cancelled {ex.task_id == handle.task_id}: {ex.reason}"
        return "completed"

    client.register(watcher, child)
    spawned = await client.spawn(watcher, None)
    await run_until_idle(client)
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING
    (kid,) = await children_of(client, spawned.task_id)
    assert await client.cancel(kid["task_id"], reason="not needed") is True
    assert await run_until_idle(client) == 1
    assert (
        await client.wait_result(watcher, spawned.task_id, timeout=10)
        == "cancelled True: not needed"
    )


# -- a parent that ends takes its descendants with it --------------------------------


@dt.task("grandchild")
async def grandchild(ctx: dt.TaskContext, p: None) -> Any:
    return await ctx.await_event("never")


@dt.task("middle")
async def middle(ctx: dt.TaskContext, p: None) -> Any:
    handle = await ctx.spawn("gc", grandchild, None)
    await ctx.spawn("sleepy", child, ChildIn(1, nap=86400))
    return await ctx.join("gc", handle)


@dt.task("top", options=dt.SpawnOptions(max_attempts=1))
async def top(ctx: dt.TaskContext, fail_after: float) -> Any:
    handle = await ctx.spawn("mid", middle, None)
    await ctx.sleep_for("wait", fail_after)
    raise dt.NonRetryable("the parent gives up")
    return await ctx.join("mid", handle)  # pragma: no cover


async def build_tree(client: dt.Durable) -> tuple[UUID, list[UUID]]:
    client.register(top, middle, grandchild, child)
    spawned = await client.spawn(top, 60.0)
    await run_until_idle(client)
    (mid,) = await children_of(client, spawned.task_id)
    below = await children_of(client, mid["task_id"])
    assert sorted(r["task_name"] for r in below) == ["child", "grandchild"]
    descendants = [mid["task_id"], *(r["task_id"] for r in below)]
    for task_id in descendants:
        assert (await client.get_task(task_id)).state is dt.TaskState.SLEEPING
        assert (await client.get_task(task_id)).root_task_id == spawned.task_id
    return spawned.task_id, descendants


async def assert_all_cancelled(client: dt.Durable, descendants: list[UUID]) -> None:
    for task_id in descendants:
        info = await client.get_task(task_id)
        assert info.state is dt.TaskState.CANCELLED, info
        assert info.cancel_reason is not None
        assert info.cancel_reason.startswith("parent ")
        assert await run_states(client, task_id) == ["cancelled"]
    ids = list(descendants)
    rows = await fetch(client, "SELECT count(*) AS n FROM @s.waits WHERE task_id = ANY(%s)", ids)
    assert rows[0]["n"] == 0
    # Nothing of theirs ever runs again, whatever the clock says.
    await advance_clock(client, 10 * 86400)
    await client.emit_event("never", "now")
    assert await run_until_idle(client) == 0
    for task_id in descendants:
        assert (await client.get_task(task_id)).state is dt.TaskState.CANCELLED


async def test_failed_parent_cancels_every_descendant(client: dt.Durable) -> None:
    root, descendants = await build_tree(client)
    await advance_clock(client, 61)
    await run_until_idle(client)
    with pytest.raises(dt.TaskFailed):
        await client.wait_result(top, root, timeout=10)
    await assert_all_cancelled(client, descendants)
    mid = await client.get_task(descendants[0])
    assert mid.cancel_reason == f"parent {root} failed"


async def test_cancelled_parent_cancels_every_descendant(client: dt.Durable) -> None:
    root, descendants = await build_tree(client)
    assert await client.cancel(root, reason="stop it all") is True
    info = await client.get_task(root)
    assert info.state is dt.TaskState.CANCELLED
    assert info.cancel_reason == "stop it all"
    # Each descendant names its own parent, not the task the cancellation started from.
    for task_id in descendants:
        parent = (await client.get_task(task_id)).parent_task_id
        assert (await client.get_task(task_id)).cancel_reason == f"parent {parent} ended"
    await assert_all_cancelled(client, descendants)
    with pytest.raises(dt.TaskCancelled):
        await client.wait_result(top, root, timeout=10)


@dt.task("keyed-parent", options=dt.SpawnOptions(max_attempts=1))
async def keyed_parent(ctx: dt.TaskContext, key: str) -> list[int]:
    """Two spawns with one key: the second returns the first child."""
    first = await ctx.spawn("first", child, ChildIn(1), dt.SpawnOptions(idempotency_key=key))
    again = await ctx.spawn("again", child, ChildIn(2), dt.SpawnOptions(idempotency_key=key))
    assert again.task_id == first.task_id
    return [(await ctx.join("j1", first)).doubled, (await ctx.join("j2", again)).doubled]


async def test_a_child_key_used_twice_returns_the_same_child(client: dt.Durable) -> None:
    client.register(child, keyed_parent)
    parent = await client.spawn(keyed_parent, "k-own")
    await run_until_idle(client)
    assert await client.wait_result(parent, timeout=5) == [2, 2]
    assert [row["task_name"] for row in await children_of(client, parent.task_id)] == ["child"]


async def test_a_child_key_naming_a_task_not_its_child_fails_the_parent(
    client: dt.Durable,
) -> None:
    """Joining a task that is not its child would wait for ever (only children report their
    end to a join, and are cancelled with their parent): refused, nothing spawned."""
    client.register(child, keyed_parent)
    other = await client.spawn(child, ChildIn(5), options=dt.SpawnOptions(idempotency_key="k"))
    parent = await client.spawn(keyed_parent, "k")
    await run_until_idle(client)
    with pytest.raises(dt.TaskFailed, match="not a child of this task"):
        await client.wait_result(parent, timeout=5)
    assert await children_of(client, parent.task_id) == []
    assert await client.wait_result(other, timeout=5) == ChildOut(10)
