"""The core lifecycle against a real PostgreSQL: results, retries, backoff, failures."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

import attrs
import pytest
import trio

import durable_trio as dt
from durable_trio.testing import advance_clock, run_until_idle
from support import query

# Per-test bookkeeping shared with the task bodies (reset by the autouse fixture).
CALLS: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


def bump(key: str) -> int:
    CALLS[key] = CALLS.get(key, 0) + 1
    return CALLS[key]


# -- typed results ---------------------------------------------------------------------


@attrs.frozen
class Order:
    order_id: UUID
    amount: int


@attrs.frozen
class Receipt:
    order_id: UUID
    total: int
    lines: list[str]


@dt.task("receipt")
async def receipt(ctx: dt.TaskContext, order: Order) -> Receipt:
    doubled = await ctx.step("double", lambda: order.amount * 2)
    return Receipt(order.order_id, doubled, [f"line {order.amount}"])


async def test_wait_result_returns_typed_output(client: dt.Durable) -> None:
    client.register(receipt)
    order = Order(UUID("01900000-0000-7000-8000-000000000001"), 21)
    spawned = await client.spawn(receipt, order)
    assert spawned.created
    assert spawned.attempt == 1

    assert await run_until_idle(client) == 1

    result = await client.wait_result(receipt, spawned.task_id, timeout=10)
    assert type(result) is Receipt
    assert result == Receipt(order.order_id, 42, ["line 21"])
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.COMPLETED
    assert info.attempts == 1
    assert info.result == {"order_id": str(order.order_id), "total": 42, "lines": ["line 21"]}


async def test_wait_result_by_registered_name_is_typed(client: dt.Durable) -> None:
    client.register(receipt)
    order = Order(UUID("01900000-0000-7000-8000-000000000002"), 1)
    spawned = await client.spawn(receipt, order)
    await run_until_idle(client)
    assert await client.wait_result("receipt", spawned.task_id, timeout=10) == Receipt(
        order.order_id, 2, ["line 1"]
    )


async def test_wait_result_times_out_when_unfinished(client: dt.Durable) -> None:
    client.register(receipt)
    spawned = await client.spawn(receipt, Order(UUID(int=5), 1))
    with pytest.raises(dt.WaitTimeout):
        await client.wait_result(receipt, spawned.task_id, timeout=0.05)
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.PENDING


# -- retries ---------------------------------------------------------------------------


class FlakyError(Exception):
    pass


@dt.task(
    "flaky",
    options=dt.SpawnOptions(max_attempts=3, retry=dt.RetryStrategy.fixed(10)),
)
async def flaky(ctx: dt.TaskContext, params: Any) -> str:
    n = bump("flaky")
    if n <= 2:
        raise FlakyError(f"failure number {n}")
    return f"ok after {ctx.attempt}"


async def claimable(client: dt.Durable) -> int:
    return await client.store.claimable_count([client.queue], client.registered)


async def test_fixed_retry_waits_then_succeeds(client: dt.Durable) -> None:
    client.register(flaky)
    spawned = await client.spawn(flaky, {})

    for failure in (1, 2):
        assert await run_until_idle(client) == 1
        info = await client.get_task(spawned.task_id)
        assert info.state is dt.TaskState.PENDING
        assert info.attempts == failure + 1
        assert info.error is not None
        assert info.error["type"].endswith("FlakyError")
        assert info.error["message"] == f"failure number {failure}"
        assert "Traceback" in info.error["traceback"]
        assert f"failure number {failure}" in info.error["traceback"]
        assert info.error["attempt"] == failure
        # Not claimable before the 10 s backoff has passed on the database clock.
        assert await claimable(client) == 0
        assert await run_until_idle(client) == 0
        # (Margins of seconds: real time passes on the database clock too.)
        await advance_clock(client, 5)
        assert await claimable(client) == 0
        await advance_clock(client, 5.5)
        assert await claimable(client) == 1

    assert await run_until_idle(client) == 1
    assert await client.wait_result(flaky, spawned.task_id, timeout=10) == "ok after 3"
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.COMPLETED
    assert info.attempts == 3
    assert CALLS["flaky"] == 3
    runs = await query(
        client,
        "SELECT attempt, state, error FROM {schema}.runs WHERE task_id = %s ORDER BY attempt",
        spawned.task_id,
    )
    assert [(r["attempt"], r["state"]) for r in runs] == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]
    assert runs[0]["error"]["message"] == "failure number 1"
    assert runs[1]["error"]["message"] == "failure number 2"


@dt.task("refuses", options=dt.SpawnOptions(max_attempts=5, retry=dt.RetryStrategy.none()))
async def refuses(ctx: dt.TaskContext, params: Any) -> None:
    bump("refuses")
    raise dt.NonRetryable("never going to work")


async def test_non_retryable_fails_at_once(client: dt.Durable) -> None:
    client.register(refuses)
    spawned = await client.spawn(refuses, {})
    assert await run_until_idle(client) == 1
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.FAILED
    assert info.attempts == 1
    assert CALLS["refuses"] == 1
    with pytest.raises(dt.TaskFailed) as caught:
        await client.wait_result(refuses, spawned.task_id, timeout=10)
    assert caught.value.error["type"].endswith("NonRetryable")
    assert caught.value.error["message"] == "never going to work"
    assert caught.value.error["retryable"] is False


@dt.task(
    "bad_value",
    options=dt.SpawnOptions(max_attempts=5, retry=dt.RetryStrategy.none()),
    non_retryable=(ValueError,),
)
async def bad_value(ctx: dt.TaskContext, params: Any) -> None:
    bump("bad_value")
    raise ValueError("bad input")


@dt.task("other_error", options=dt.SpawnOptions(max_attempts=2, retry=dt.RetryStrategy.none()))
async def other_error(ctx: dt.TaskContext, params: Any) -> None:
    bump("other_error")
    raise KeyError("retry me")


async def test_decorator_non_retryable_types(client: dt.Durable) -> None:
    client.register(bad_value, other_error)
    a = await client.spawn(bad_value, {})
    b = await client.spawn(other_error, {})
    await run_until_idle(client)
    info_a = await client.get_task(a.task_id)
    assert info_a.state is dt.TaskState.FAILED
    assert info_a.attempts == 1
    assert CALLS["bad_value"] == 1
    assert info_a.error is not None
    assert info_a.error["type"] == "builtins.ValueError"
    # A type not listed is retried until attempts run out.
    info_b = await client.get_task(b.task_id)
    assert info_b.state is dt.TaskState.FAILED
    assert info_b.attempts == 2
    assert CALLS["other_error"] == 2


@dt.task("always_fails", options=dt.SpawnOptions(max_attempts=3, retry=dt.RetryStrategy.none()))
async def always_fails(ctx: dt.TaskContext, params: Any) -> None:
    await ctx.step("work", lambda: bump("work"))
    raise RuntimeError(f"attempt {ctx.attempt} broke")


async def test_exhausting_attempts_fails_the_task(client: dt.Durable) -> None:
    client.register(always_fails)
    spawned = await client.spawn(always_fails, {})
    assert await run_until_idle(client) == 3
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.FAILED
    assert info.attempts == 3
    assert info.finished_at is not None
    # The checkpointed step ran once; replays reused it.
    assert CALLS["work"] == 1
    with pytest.raises(dt.TaskFailed) as caught:
        await client.wait_result(always_fails, spawned.task_id, timeout=10)
    assert caught.value.task_id == spawned.task_id
    assert caught.value.error["type"] == "builtins.RuntimeError"
    assert caught.value.error["message"] == "attempt 3 broke"
    runs = await query(
        client, "SELECT state FROM {schema}.runs WHERE task_id = %s", spawned.task_id
    )
    assert sorted(r["state"] for r in runs) == ["failed"] * 3
    # Nothing left to claim, even much later.
    await advance_clock(client, 86_400)
    assert await run_until_idle(client) == 0


@dt.task(
    "backoff",
    options=dt.SpawnOptions(
        max_attempts=4,
        retry=dt.RetryStrategy.exponential(10, factor=2, max_delay=3600, jitter=0.0),
    ),
)
async def backoff(ctx: dt.TaskContext, params: Any) -> None:
    raise RuntimeError("again")


async def test_exponential_backoff_delays_grow(client: dt.Durable) -> None:
    client.register(backoff)
    spawned = await client.spawn(backoff, {})
    for delay in (10, 20, 40):
        assert await run_until_idle(client) == 1
        assert await claimable(client) == 0
        await advance_clock(client, delay / 2)
        assert await claimable(client) == 0
        await advance_clock(client, delay / 2)
    assert await run_until_idle(client) == 1
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.FAILED

    runs = await query(
        client,
        "SELECT attempt, available_at, created_at, wake_reason FROM {schema}.runs"
        " WHERE task_id = %s ORDER BY attempt",
        spawned.task_id,
    )
    assert [r["attempt"] for r in runs] == [1, 2, 3, 4]
    delays = [r["available_at"] - r["created_at"] for r in runs[1:]]
    assert delays == [timedelta(seconds=10), timedelta(seconds=20), timedelta(seconds=40)]
    assert [r["wake_reason"] for r in runs[1:]] == ["retry"] * 3


@dt.task(
    "jittered",
    options=dt.SpawnOptions(
        max_attempts=4, retry=dt.RetryStrategy.exponential(100, factor=3, jitter=0.5)
    ),
)
async def jittered(ctx: dt.TaskContext, params: Any) -> None:
    raise RuntimeError("again")


async def test_exponential_backoff_with_jitter_stays_in_bounds(client: dt.Durable) -> None:
    client.register(jittered)
    spawned = await client.spawn(jittered, {})
    for _ in range(3):
        assert await run_until_idle(client) == 1
        await advance_clock(client, 10_000)
    runs = await query(
        client,
        "SELECT extract(epoch FROM available_at - created_at)::float8 AS delay"
        " FROM {schema}.runs WHERE task_id = %s AND attempt > 1 ORDER BY attempt",
        spawned.task_id,
    )
    delays = [r["delay"] for r in runs]
    assert len(delays) == 3
    for delay, nominal in zip(delays, (100, 300, 900), strict=True):
        assert nominal * 0.5 <= delay <= nominal
    assert delays[0] < delays[1] < delays[2]


# -- a whole run with several steps ---------------------------------------------------


@dt.task("steps")
async def steps(ctx: dt.TaskContext, params: Any) -> list[int]:
    out = []
    for i in range(3):
        out.append(await ctx.step("add", lambda i=i: bump(f"add{i}") and i * 10))
    return out


async def test_repeated_step_names_get_numbered_checkpoints(client: dt.Durable) -> None:
    client.register(steps)
    spawned = await client.spawn(steps, None)
    await run_until_idle(client)
    assert await client.wait_result(steps, spawned.task_id, timeout=10) == [0, 10, 20]
    rows = await query(
        client,
        "SELECT name, value FROM {schema}.checkpoints WHERE task_id = %s ORDER BY name",
        spawned.task_id,
    )
    assert [(r["name"], r["value"]) for r in rows] == [("add", 0), ("add#2", 10), ("add#3", 20)]


async def test_get_task_unknown_id(client: dt.Durable) -> None:
    with pytest.raises(dt.TaskNotFound):
        await client.get_task(UUID(int=1))


async def test_worker_context_manager_runs_tasks(client: dt.Durable) -> None:
    client.register(receipt)
    spawned = await client.spawn(receipt, Order(UUID(int=9), 4))
    with trio.fail_after(30):
        async with client.worker(dt.WorkerOptions(concurrency=2, poll_interval=0.05)):
            result = await client.wait_result(receipt, spawned.task_id, timeout=10)
    assert result == Receipt(UUID(int=9), 8, ["line 4"])


@dt.task("grumpy", options=dt.SpawnOptions(max_attempts=2, retry=dt.RetryStrategy.none()))
async def grumpy(ctx: dt.TaskContext, p: None) -> None:
    raise ValueError(f"grumpy on attempt {ctx.attempt}")


async def test_failed_attempts_are_logged_with_their_traceback(
    client: dt.Durable, caplog: pytest.LogCaptureFixture
) -> None:
    # Visible without querying the database: WARNING while a retry follows, then ERROR.
    client.register(grumpy)
    spawned = await client.spawn(grumpy, None)
    with caplog.at_level("WARNING", logger="durable_trio.worker"):
        await run_until_idle(client)
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert [r.levelname for r in failures] == ["WARNING", "ERROR"]
    first, last = (r.getMessage() for r in failures)
    assert f"task 'grumpy' {spawned.task_id} attempt 1/2 failed; retrying in 0 s" in first
    assert "grumpy on attempt 1" in first
    assert "attempt 2/2 failed; no attempts left" in last
    assert all(r.exc_info and r.exc_info[0] is ValueError for r in failures)
    with pytest.raises(dt.TaskFailed):
        await client.wait_result(grumpy, spawned.task_id, timeout=10)


async def test_wait_timeout_names_the_limit_in_seconds(client: dt.Durable) -> None:
    client.register(grumpy)
    spawned = await client.spawn(grumpy, None)  # no worker: it never finishes
    with pytest.raises(dt.WaitTimeout, match=r"did not finish within 0\.05 seconds"):
        await client.wait_result(grumpy, spawned.task_id, timeout=timedelta(milliseconds=50))
