"""Poison, as a property: whatever a caller passes (options in and far out of range, names
no task may have) and whatever a task does (raise hostile exceptions, return values that
cannot be stored), a spawn either raises a documented DurableError and writes nothing, or
the task reaches a terminal state with its error stored; and the workers still serve a
canary task afterwards. Hypothesis draws every case; at least 200 examples run in CI."""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import durable_trio as dt
from durable_trio.testing import run_until_idle
from support import fetch

EXAMPLES = 1000 if os.environ.get("DURABLE_THOROUGH") == "1" else 200

# -- what tasks do ------------------------------------------------------------------------


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class ReprRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def cyclic() -> BaseException:
    a, b = ValueError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    return a


def nested(depth: int) -> BaseException:
    ex: BaseException = ValueError("deep")
    for _ in range(depth):
        ex = ExceptionGroup("group", [ex])  # type: ignore[list-item]
    return ex


RAISES: list[Any] = [
    lambda: StrRaises(),
    lambda: ReprRaises(),
    lambda: ExceptionGroup("g", [StrRaises(), ReprRaises()]),
    lambda: ValueError("x" * 200_000),
    cyclic,
    lambda: nested(150),
    lambda: SystemExit(3),
    lambda: dt.NonRetryable("plain"),
    lambda: ValueError("\x00 nul \ud800 surrogate"),
]

RETURNS: list[Any] = [
    lambda: math.nan,
    lambda: b"bytes",
    lambda: {1, 2},
    lambda: datetime(2030, 1, 1),  # naive
    lambda: (1, 2),
    lambda: {1: "int key"},
    lambda: "s" * 11 * 1024 * 1024,  # past the 10 MiB limit
    lambda: object(),
    lambda: {"fine": [1, "two", None]},
]


@dt.task("hostile", options=dt.SpawnOptions(max_attempts=2, retry=dt.RetryStrategy.none()))
async def hostile(ctx: dt.TaskContext, case: list[Any]) -> Any:
    kind, index = case
    if kind == "raise":
        raise RAISES[index]()
    if kind == "step":
        return await ctx.step("value", RETURNS[index])
    return RETURNS[index]()


@dt.task("canary")
async def canary(ctx: dt.TaskContext, p: None) -> str:
    return await ctx.step("sing", lambda: "tweet")


# -- what callers pass ----------------------------------------------------------------------

durations = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e13, -1.0, 0.0, 36_525 * 86_400.0, 36_526 * 86_400.0]),
    st.sampled_from([timedelta.max, timedelta.min, timedelta(days=36_526), timedelta(0)]),
    st.integers(min_value=-(10**15), max_value=10**15),
)
names = st.one_of(
    st.text(max_size=250),
    st.sampled_from(["", "$reserved", "a" * 201, "nul\x00", "tab\t", "ok-name", "hostile"]),
)
option_kwargs = st.fixed_dictionaries(
    {},
    optional={
        "max_attempts": st.integers(min_value=-5, max_value=20_000),
        "priority": st.integers(min_value=-(10**7), max_value=10**7),
        "delay": durations,
        "start_at": st.sampled_from(
            [
                datetime(2030, 1, 1, tzinfo=UTC),
                datetime(9999, 1, 1, tzinfo=UTC),
                datetime(2030, 1, 1),
            ]
        ),
        "idempotency_key": st.one_of(st.text(max_size=600), st.just("\x00")),
        "headers": st.dictionaries(names, st.integers(), max_size=3),
        "retry": st.one_of(
            st.builds(lambda d: ("fixed", d), durations),
            st.builds(lambda d: ("exponential", d), durations),
        ),
        "cancellation": st.tuples(durations, durations),
    },
)
task_behaviour = st.one_of(
    st.tuples(st.just("raise"), st.integers(0, len(RAISES) - 1)),
    st.tuples(st.just("step"), st.integers(0, len(RETURNS) - 1)),
    st.tuples(st.just("return"), st.integers(0, len(RETURNS) - 1)),
)


def build_options(kwargs: dict[str, Any]) -> dt.SpawnOptions:
    """SpawnOptions from drawn values (which may be refused, as they would be for a user)."""
    made = dict(kwargs)
    if "retry" in made:
        kind, delay = made["retry"]
        made["retry"] = (
            dt.RetryStrategy.fixed(delay)
            if kind == "fixed"
            else dt.RetryStrategy.exponential(delay)
        )
    if "cancellation" in made:
        pending, duration = made["cancellation"]
        made["cancellation"] = dt.CancellationPolicy(
            max_pending_delay=pending, max_duration=duration
        )
    if "start_at" in made and "delay" in made:
        del made["delay"]
    return dt.SpawnOptions(**made)


async def tasks_written(client: dt.Durable) -> int:
    [row] = await fetch(client, "SELECT count(*) AS n FROM @s.tasks")
    return int(row["n"])


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    how=st.sampled_from(["options", "name", "task"]),
    kwargs=option_kwargs,
    name=names,
    behaviour=task_behaviour,
)
async def test_nothing_a_caller_or_a_task_does_stops_the_workers(
    pg_url: str,
    schema: str,
    how: str,
    kwargs: dict[str, Any],
    name: str,
    behaviour: tuple[str, int],
) -> None:
    async with dt.Durable.connect(pg_url, schema=schema) as client:
        await one_example(client, how, kwargs, name, behaviour)


async def one_example(
    client: dt.Durable, how: str, kwargs: dict[str, Any], name: str, behaviour: tuple[str, int]
) -> None:
    client.register(hostile, canary)
    before = await tasks_written(client)
    spawned = None
    try:
        if how == "options":
            options = build_options(kwargs)
            spawned = await client.spawn(hostile, ["return", len(RETURNS) - 1], options=options)
        elif how == "name":
            spawned = await client.spawn_by_name(name, None)
        else:
            spawned = await client.spawn(hostile, list(behaviour))
    except dt.DurableError:
        assert await tasks_written(client) == before, "a refused spawn wrote something"
    except (TypeError, ValueError) as ex:  # pragma: no cover - must not happen
        pytest.fail(f"a spawn raised {type(ex).__name__}, not a DurableError: {ex}")

    # Work the queue, jumping the clock over short delays and backoffs (at most a day per
    # example, so the test clock stays within MAX_DURATION over every example); what is
    # due later still is cancelled, which must end it too.
    await run_until_idle(client, skip_time=True, max_skip=timedelta(days=1), max_seconds=120)
    if spawned is not None and how != "name":
        info = await client.get_task(spawned.task_id)
        if not info.terminal and info.state is not dt.TaskState.RUNNING:
            await client.cancel(spawned.task_id, "not due within the example")
            info = await client.get_task(spawned.task_id)
        assert info.terminal, info
        if info.state is dt.TaskState.FAILED:
            assert info.error is not None
            assert isinstance(info.error.get("message"), str)
    # The workers still serve.
    probe = await client.spawn(canary, None)
    await run_until_idle(client)
    assert await client.wait_result(probe, timeout=30) == "tweet"
