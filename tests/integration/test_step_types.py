"""A step's result type: from the function's annotation, from ``result_type=``, and when
neither says (a lambda, a wrapper, a TypeVar), plain JSON only: never a value that a
replay would return as something else."""

from __future__ import annotations

from typing import Any, TypeVar

import attrs
import pytest

import durable_trio as dt
from durable_trio.testing import run_until_idle

T = TypeVar("T")


@attrs.frozen
class Receipt:
    total: int


def identity(value: T) -> T:
    return value


SEEN: list[Any] = []


@dt.task("typed-steps")
async def typed_steps(ctx: dt.TaskContext, case: str) -> Any:
    if case == "lambda-object":
        value: Any = await ctx.step("s", lambda: Receipt(1))
    elif case == "typevar-object":
        value = await ctx.step("s", identity, Receipt(2))
    elif case == "lambda-tuple":
        value = await ctx.step("s", lambda: (1, 2))
    elif case == "result-type":
        value = await ctx.step("s", lambda: Receipt(3), result_type=Receipt)
    elif case == "typevar-json":
        value = await ctx.step("s", identity, {"plain": [1, "two", None]})
    else:
        value = await ctx.step("s", lambda: {"n": 1, "items": [1.5, True]})
    SEEN.append(value)
    await ctx.sleep_for("nap", 60)  # suspend: the resume replays the step
    return repr(value)


@pytest.mark.parametrize(
    ("case", "kind"),
    [("lambda-object", "Receipt"), ("typevar-object", "Receipt"), ("lambda-tuple", "tuple")],
)
async def test_an_undeclared_type_with_a_value_that_would_drift_is_refused(
    client: dt.Durable, case: str, kind: str
) -> None:
    client.register(typed_steps)
    spawned = await client.spawn(typed_steps, case)
    await run_until_idle(client)
    with pytest.raises(dt.TaskFailed) as caught:
        await client.wait_result(typed_steps, spawned.task_id, timeout=10)
    error = caught.value.error
    assert error is not None
    assert error["type"] == "durable_trio._errors.SerializationError"
    assert f"returned a {kind}" in error["message"]
    assert f"pass result_type={kind}" in error["message"]
    assert (await client.get_task(spawned.task_id)).attempts == 1  # not retried


@pytest.mark.parametrize(
    ("case", "value"),
    [
        ("result-type", Receipt(3)),
        ("typevar-json", {"plain": [1, "two", None]}),
        ("lambda-json", {"n": 1, "items": [1.5, True]}),
    ],
)
async def test_declared_types_and_plain_json_come_back_the_same_on_replay(
    client: dt.Durable, case: str, value: Any
) -> None:
    SEEN.clear()
    client.register(typed_steps)
    spawned = await client.spawn(typed_steps, case)
    await run_until_idle(client, skip_time=True)
    assert await client.wait_result(typed_steps, spawned.task_id, timeout=10) == repr(value)
    assert [value, value] == SEEN  # the first run and the replay saw the same value
