"""A value that does not fit its type says where it was: the params, the result, a step, an
event's payload, a child's result (docs/serialization.md promises the place is named)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest

import durable_trio as dt
from durable_trio.testing import run_until_idle
from support import fetch


@attrs.frozen
class Box:
    size: int


@dt.task("box")
async def box(ctx: dt.TaskContext, p: Box) -> int:
    return p.size


@dt.task("liar")
async def liar(ctx: dt.TaskContext, p: Any) -> int:
    return "not a number"  # type: ignore[return-value]


@dt.task("kid")
async def kid_returns_text(ctx: dt.TaskContext, p: Any) -> str:
    return "text"


# The same task as another deploy declares it: its result is an int.
kid_declared_int = dt.TaskDefinition(name="kid", fn=kid_returns_text.fn, output_type=int)


@dt.task("parent")
async def parent(ctx: dt.TaskContext, p: Any) -> Any:
    handle = await ctx.spawn("c", kid_declared_int, None)
    return await ctx.join("c", handle)


@pytest.fixture
async def other(pg_url: str, schema: str, client: dt.Durable) -> AsyncIterator[dt.Durable]:
    """A client of the same schema that has not registered the tasks."""
    async with dt.Durable.connect(pg_url, schema=schema, migrate=False) as c:
        yield c


async def failed_message(client: dt.Durable, task_id: Any) -> str:
    info = await client.get_task(task_id)
    assert info.state is dt.TaskState.FAILED, info
    assert info.error is not None
    assert info.error["type"] == "durable_trio._errors.SerializationError"
    message: str = info.error["message"]
    return message


async def test_params_that_do_not_fit_say_they_are_the_params(
    client: dt.Durable, other: dt.Durable
) -> None:
    spawned = await other.spawn_by_name("box", {"wrong": 1})  # not checked: not registered
    client.register(box)
    await run_until_idle(client)
    message = await failed_message(client, spawned.task_id)
    assert message.startswith("params of task 'box': value {'wrong': 1} does not match Box")


async def test_a_result_that_does_not_fit_says_it_is_the_result(client: dt.Durable) -> None:
    client.register(liar)
    spawned = await client.spawn(liar, None)
    await run_until_idle(client)
    message = await failed_message(client, spawned.task_id)
    assert message.startswith("result of task 'liar': ")
    assert "'not a number'" in message


async def test_a_child_result_that_does_not_fit_names_the_child_and_the_join(
    client: dt.Durable,
) -> None:
    client.register(parent, kid_returns_text)
    spawned = await client.spawn(parent, None)
    await run_until_idle(client)
    message = await failed_message(client, spawned.task_id)
    [child] = await fetch(
        client, "SELECT task_id FROM @s.tasks WHERE parent_task_id = %s", spawned.task_id
    )
    assert message.startswith(
        f"result of child task 'kid' {child['task_id']} (joined as 'c'): "
        "value 'text' does not match int"
    )


async def test_wait_result_names_the_task_whose_result_does_not_fit(client: dt.Durable) -> None:
    client.register(kid_returns_text)
    spawned = await client.spawn(kid_returns_text, None)
    await run_until_idle(client)
    with pytest.raises(dt.SerializationError) as info:
        await client.wait_result(kid_declared_int, spawned.task_id, timeout=5)
    assert str(info.value).startswith(f"result of task 'kid' {spawned.task_id}: value 'text'")


async def test_an_event_payload_that_does_not_fit_names_the_event(client: dt.Durable) -> None:
    @dt.task("waiter")
    async def waiter(ctx: dt.TaskContext, p: Any) -> Any:
        return await ctx.await_event("go", type=Box)

    client.register(waiter)
    spawned = await client.spawn(waiter, None)
    await client.emit_event("go", {"size": "large"})
    await run_until_idle(client)
    message = await failed_message(client, spawned.task_id)
    assert message.startswith("payload of event 'go': value {'size': 'large'} does not match Box")
