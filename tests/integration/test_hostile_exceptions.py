"""A task's failure is recorded whatever its exception does, and no exception from task
code stops the worker (save KeyboardInterrupt, which stops it as documented)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import trio

import durable_trio as dt
from durable_trio._failures import MESSAGE_LIMIT, TRACEBACK_LIMIT
from durable_trio.testing import run_until_idle


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class ReprRaisesToo(StrRaises):
    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class StrNotAString(Exception):
    def __str__(self) -> str:
        return 5  # type: ignore[return-value]


def cause_cycle() -> BaseException:
    first, second = ValueError("first"), ValueError("second")
    first.__cause__, second.__cause__ = second, first
    first.__context__, second.__context__ = second, first
    return first


def nested_groups() -> BaseException:
    ex: Exception = ValueError("innermost")
    for level in range(200):
        ex = ExceptionGroup(f"level {level}", [ex, KeyError(level)])
    return ex


def unpicklable() -> BaseException:
    ex = ValueError("carries a lock and a lambda")
    ex.lock = threading.Lock()  # type: ignore[attr-defined]
    ex.callback = lambda: None  # type: ignore[attr-defined]
    return ex


def notes_not_a_list() -> BaseException:
    ex = ValueError("odd notes")
    ex.__notes__ = 42  # type: ignore[attr-defined]
    return ex


# case -> (the exception, its stored type, fragments of its stored message)
CASES: dict[str, tuple[Callable[[], BaseException], str, tuple[str, ...]]] = {
    "str-raises": (StrRaises, "StrRaises", ("str() of", "raised RuntimeError")),
    "str-and-repr-raise": (ReprRaisesToo, "ReprRaisesToo", ("raised RuntimeError",)),
    "str-not-a-string": (StrNotAString, "StrNotAString", ("raised TypeError",)),
    "str-raises-in-a-group": (
        lambda: ExceptionGroup("two failed", [StrRaises(), ValueError("plain")]),
        "builtins.ExceptionGroup",
        ("two failed", "StrRaises: <str() of", "ValueError: plain"),
    ),
    "enormous": (lambda: ValueError("x" * 5_000_000), "builtins.ValueError", ("xxx\n...\nxxx",)),
    "cause-cycle": (cause_cycle, "builtins.ValueError", ("first",)),
    "nested-groups": (nested_groups, "builtins.ExceptionGroup", ("level 199", "not shown")),
    "unpicklable": (unpicklable, "builtins.ValueError", ("carries a lock",)),
    "notes-not-a-list": (notes_not_a_list, "builtins.ValueError", ("odd notes",)),
    "system-exit": (lambda: SystemExit(3), "builtins.SystemExit", ("3",)),
}


@dt.task("hostile")
async def hostile(ctx: dt.TaskContext, case: str) -> None:
    raise CASES[case][0]()


@dt.task("hostile-canary")
async def canary(ctx: dt.TaskContext, value: int) -> int:
    return value


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_hostile_exception_is_recorded_and_the_worker_goes_on(
    client: dt.Durable, case: str
) -> None:
    client.register(hostile, canary)
    bad = await client.spawn(hostile, case, options=dt.SpawnOptions(max_attempts=1))
    good = await client.spawn(canary, 7)
    await run_until_idle(client)
    info = await client.get_task(bad.task_id)
    assert info.state is dt.TaskState.FAILED
    assert info.error is not None
    _, stored_type, fragments = CASES[case]
    assert info.error["type"].endswith(stored_type)
    for fragment in fragments:
        assert fragment in info.error["message"], info.error["message"][:500]
    # Bounded, as docs/reliability.md says.
    assert len(info.error["message"]) <= MESSAGE_LIMIT + len("\n...\n")
    assert len(info.error["traceback"]) <= TRACEBACK_LIMIT + len("\n...\n")
    assert await client.wait_result(canary, good.task_id, timeout=5) == 7


async def test_a_cause_cycle_keeps_its_traceback(client: dt.Durable) -> None:
    client.register(hostile)
    bad = await client.spawn(hostile, "cause-cycle", options=dt.SpawnOptions(max_attempts=1))
    await run_until_idle(client)
    error = (await client.get_task(bad.task_id)).error
    assert error is not None
    assert "ValueError: second" in error["traceback"]
    assert "ValueError: first" in error["traceback"]


STARTED = trio.Event()
RELEASE = trio.Event()


@dt.task("interrupts")
async def interrupts(ctx: dt.TaskContext, _: None) -> None:
    await STARTED.wait()
    raise KeyboardInterrupt


@dt.task("long-running")
async def long_running(ctx: dt.TaskContext, _: None) -> str:
    STARTED.set()
    await RELEASE.wait()
    return "done"


async def test_keyboard_interrupt_fails_the_attempt_and_stops_the_worker(
    client: dt.Durable,
) -> None:
    STARTED.__init__()  # type: ignore[misc]
    RELEASE.__init__()  # type: ignore[misc]
    client.register(interrupts, long_running, canary)
    other = await client.spawn(long_running, None)
    bad = await client.spawn(interrupts, None, options=dt.SpawnOptions(max_attempts=1))
    worker = client.new_worker(dt.WorkerOptions(concurrency=4, poll_interval=0.05))
    with trio.fail_after(15), pytest.raises(KeyboardInterrupt):
        await worker.run()
    # The interrupted attempt is recorded as failed (retried, had it attempts left)...
    info = await client.get_task(bad.task_id)
    assert info.state is dt.TaskState.FAILED
    assert info.error is not None
    assert info.error["type"] == "builtins.KeyboardInterrupt"
    # ...and the worker's other run was handed back without costing an attempt.
    held = await client.get_task(other.task_id)
    assert held.state is dt.TaskState.PENDING
    assert held.attempts == 1
    RELEASE.set()
    done = await client.spawn(canary, 1)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            again = client.new_worker(dt.WorkerOptions(concurrency=4, poll_interval=0.05))
            await nursery.start(again.run)
            assert await client.wait_result(long_running, other.task_id) == "done"
            assert await client.wait_result(canary, done.task_id) == 1
            again.shutdown()
