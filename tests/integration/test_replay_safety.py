"""Replay safety: an attempt must replay what earlier attempts stored before anything new
runs, so code changed under a running task fails it with ReplayMismatch rather than
repeating work; ctx.patched() lets code branch between the old and the new path."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import durable_trio as dt
from durable_trio.testing import advance_clock, run_until_idle
from support import query

# The code "deployed" for the tasks below (tests redeploy by changing it), and how often
# each step's body ran. Reset for every test.
DEPLOYED: dict[str, int] = {}
CALLS: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    DEPLOYED.clear()
    DEPLOYED["version"] = 1
    CALLS.clear()


def body(name: str) -> Any:
    """A step body that counts its runs."""

    def run() -> str:
        CALLS[name] = CALLS.get(name, 0) + 1
        return name

    return run


def v1() -> bool:
    return DEPLOYED["version"] == 1


async def failed_with(client: dt.Durable, task: Any, task_id: Any) -> dict[str, Any]:
    with pytest.raises(dt.TaskFailed) as caught:
        await client.wait_result(task, task_id, timeout=10)
    return caught.value.error


async def stored_names(client: dt.Durable, task_id: Any) -> set[str]:
    rows = await query(client, "SELECT name FROM {schema}.checkpoints WHERE task_id = %s", task_id)
    return {row["name"] for row in rows}


# -- a renamed step ----------------------------------------------------------------------


@dt.task("checkout")
async def checkout(ctx: dt.TaskContext, p: None) -> str:
    await ctx.step("charge" if v1() else "charge-card", body("charge"))
    await ctx.await_event("shipped")
    return "done"


async def test_a_renamed_step_is_not_run_again_on_resume(client: dt.Durable) -> None:
    client.register(checkout)
    spawned = await client.spawn(checkout, None)
    await run_until_idle(client)  # charged, then suspended waiting for "shipped"
    assert CALLS == {"charge": 1}

    DEPLOYED["version"] = 2  # redeployed: the step is now called "charge-card"
    await client.emit_event("shipped")
    await run_until_idle(client)

    assert CALLS == {"charge": 1}  # the card was not charged twice
    error = await failed_with(client, checkout, spawned.task_id)
    assert error["type"] == "durable_trio._errors.ReplayMismatch"
    assert "'charge-card'" in error["message"]
    assert "'charge'" in error["message"]
    assert error["retryable"] is False
    assert (await client.get_task(spawned.task_id)).attempts == 1
    # Its checkpoints are kept: fixed code resumes from them when the task is retried.
    assert {"charge", "$event:shipped"} <= await stored_names(client, spawned.task_id)


# -- a reordered step --------------------------------------------------------------------


@dt.task("reordered")
async def reordered(ctx: dt.TaskContext, p: None) -> None:
    order = ("reserve", "bill") if v1() else ("bill", "reserve")
    await ctx.step(order[0], body(order[0]))
    await ctx.sleep_for("nap", 10)
    await ctx.step(order[1], body(order[1]))


async def test_a_reordered_step_is_a_mismatch(client: dt.Durable) -> None:
    client.register(reordered)
    spawned = await client.spawn(reordered, None)
    await run_until_idle(client)
    DEPLOYED["version"] = 2
    await advance_clock(client, 11)
    await run_until_idle(client)

    assert CALLS == {"reserve": 1}  # "bill" never ran: it now came before "reserve"
    error = await failed_with(client, reordered, spawned.task_id)
    assert error["type"].endswith("ReplayMismatch")
    assert "asks for 'bill'" in error["message"]
    assert "'reserve'" in error["message"]
    assert "'$sleep:nap'" in error["message"]


# -- a removed step ----------------------------------------------------------------------


@dt.task("removed_middle")
async def removed_middle(ctx: dt.TaskContext, p: None) -> None:
    await ctx.step("fetch", body("fetch"))
    if v1():
        await ctx.step("validate", body("validate"))
    await ctx.sleep_for("nap", 10)
    await ctx.step("store", body("store"))


@dt.task("removed_last")
async def removed_last(ctx: dt.TaskContext, p: None) -> None:
    await ctx.step("fetch", body("fetch"))
    await ctx.sleep_for("nap", 10)
    if v1():
        await ctx.step("validate", body("validate"))
        await ctx.sleep_for("nap-2", 10)


@pytest.mark.parametrize(
    ("task", "requested"),
    [(removed_middle, "asks for 'store'"), (removed_last, 'asks for "the task\'s return"')],
)
async def test_a_removed_step_is_a_mismatch(client: dt.Durable, task: Any, requested: str) -> None:
    client.register(task)
    spawned = await client.spawn(task, None)
    await run_until_idle(client)
    await advance_clock(client, 11)
    if task is removed_last:
        await run_until_idle(client)  # past "validate", asleep in "nap-2"
    DEPLOYED["version"] = 2
    await advance_clock(client, 11)
    await run_until_idle(client)

    assert CALLS == {"fetch": 1, "validate": 1}  # nothing after the removed step ran
    error = await failed_with(client, task, spawned.task_id)
    assert error["type"].endswith("ReplayMismatch")
    assert requested in error["message"]
    assert "'validate'" in error["message"]


# -- a swallowed mismatch ---------------------------------------------------------------


@dt.task("swallows_mismatch")
async def swallows_mismatch(ctx: dt.TaskContext, p: None) -> str:
    try:
        await ctx.step("old" if v1() else "new", body("renamed"))
    except dt.ReplayMismatch:
        CALLS["caught"] = 1  # task code catching Exception: the return still fails the run
    await ctx.sleep_for("nap", 10)
    return "done"


async def test_a_caught_mismatch_still_fails_the_run(client: dt.Durable) -> None:
    client.register(swallows_mismatch)
    spawned = await client.spawn(swallows_mismatch, None)
    await run_until_idle(client)
    DEPLOYED["version"] = 2
    await advance_clock(client, 11)
    await run_until_idle(client)
    assert CALLS == {"renamed": 1, "caught": 1}
    error = await failed_with(client, swallows_mismatch, spawned.task_id)
    assert error["type"].endswith("ReplayMismatch")
    assert 'asks for "the task\'s return"' in error["message"]


# -- a deliberate change: ctx.patched ----------------------------------------------------


@dt.task("payment")
async def payment(ctx: dt.TaskContext, p: None) -> list[str]:
    path = [await ctx.step("reserve", body("reserve"))]
    # Version 2 adds a fraud check before the charge.
    if not v1() and await ctx.patched("fraud-check"):
        path.append(await ctx.step("fraud-check", body("fraud-check")))
    path.append(await ctx.step("charge", body("charge")))
    await ctx.sleep_for("nap", 10)
    path.append(await ctx.step("receipt", body("receipt")))
    return path


async def test_patched_sends_old_runs_down_the_old_path_and_new_runs_down_the_new(
    client: dt.Durable,
) -> None:
    client.register(payment)
    old = await client.spawn(payment, None)
    await run_until_idle(client)  # charged under version 1, asleep
    DEPLOYED["version"] = 2
    new = await client.spawn(payment, None)
    await run_until_idle(client)  # the new run: checked for fraud, charged, asleep
    await advance_clock(client, 11)
    await run_until_idle(client)  # both resume under version 2

    assert await client.wait_result(payment, old.task_id, timeout=10) == [
        "reserve",
        "charge",
        "receipt",
    ]
    assert await client.wait_result(payment, new.task_id, timeout=10) == [
        "reserve",
        "fraud-check",
        "charge",
        "receipt",
    ]
    assert CALLS == {"reserve": 2, "charge": 2, "fraud-check": 1, "receipt": 2}
    assert "$patch:fraud-check" in await stored_names(client, new.task_id)
    assert "$patch:fraud-check" not in await stored_names(client, old.task_id)


@dt.task("patch_at_the_frontier")
async def patch_at_the_frontier(ctx: dt.TaskContext, p: None) -> list[bool]:
    await ctx.step("before", body("before"))
    await ctx.sleep_for("nap", 10)
    answers = [] if v1() else [await ctx.patched("later"), await ctx.patched("later")]
    await ctx.sleep_for("nap-2", 10)
    answers.append(await ctx.patched("later"))
    return answers


async def test_a_patch_met_with_nothing_left_to_replay_applies_and_sticks(
    client: dt.Durable,
) -> None:
    # Started under version 1, but asleep before the change point: it has not got there
    # yet, so it takes the new path, and keeps taking it when replayed later.
    client.register(patch_at_the_frontier)
    spawned = await client.spawn(patch_at_the_frontier, None)
    await run_until_idle(client)
    DEPLOYED["version"] = 2
    for _ in range(2):
        await advance_clock(client, 11)
        await run_until_idle(client)
    result = await client.wait_result(patch_at_the_frontier, spawned.task_id, timeout=10)
    assert result == [True, True, True]


# -- concurrent trio tasks in one run ----------------------------------------------------

GATES: dict[str, trio.Event] = {}


@dt.task(
    "branches",
    options=dt.SpawnOptions(max_attempts=2, retry=dt.RetryStrategy.fixed(0)),
)
async def branches(ctx: dt.TaskContext, p: None) -> list[str]:
    async def quick() -> None:
        await ctx.step("quick-1", body("quick-1"))
        if ctx.attempt == 1:
            await GATES["slow done"].wait()
            raise RuntimeError("first attempt fails after the slow branch stored its steps")
        await ctx.step("quick-2", body("quick-2"))

    async def slow() -> None:
        if ctx.attempt > 1:
            await trio.sleep(0.2)  # replays after the quick branch reached "quick-2"
        await ctx.step("slow-1", body("slow-1"))
        renamed = ctx.attempt > 1 and not v1()  # the second attempt runs new code
        await ctx.step("slow-2-renamed" if renamed else "slow-2", body("slow-2"))
        GATES["slow done"].set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(quick)
        nursery.start_soon(slow)
    return sorted(CALLS)


async def test_a_branch_waits_for_its_siblings_to_replay(client: dt.Durable) -> None:
    GATES["slow done"] = trio.Event()
    client.register(branches)
    spawned = await client.spawn(branches, None)
    await run_until_idle(client)
    assert await client.wait_result(branches, spawned.task_id, timeout=10)
    assert CALLS == {"quick-1": 1, "quick-2": 1, "slow-1": 1, "slow-2": 1}


async def test_a_branch_that_diverged_fails_the_run(client: dt.Durable) -> None:
    GATES["slow done"] = trio.Event()
    DEPLOYED["version"] = 2  # the second attempt renames a step of the slow branch
    client.register(branches)
    spawned = await client.spawn(branches, None)
    await run_until_idle(client)
    error = await failed_with(client, branches, spawned.task_id)
    assert "ReplayMismatch: " in error["message"]  # raised in the nursery: in a group
    assert "asks for 'slow-2-renamed'" in error["message"]
    assert error["retryable"] is False
    assert CALLS == {"quick-1": 1, "slow-1": 1, "slow-2": 1}  # quick-2 was held back


# -- WorkerOptions(version=...) ------------------------------------------------------------


@dt.task("versioned")
async def versioned(ctx: dt.TaskContext, p: None) -> int:
    await ctx.step("charge" if v1() else "charge-card", body("charge"))
    await ctx.await_event("shipped")
    return DEPLOYED["version"]


async def test_a_versioned_worker_leaves_tasks_started_by_other_versions_alone(
    client: dt.Durable,
) -> None:
    client.register(versioned)
    old = await client.spawn(versioned, None)
    await run_until_idle(client, dt.WorkerOptions(version="1", poll_interval=0.05))
    DEPLOYED["version"] = 2
    new = await client.spawn(versioned, None)
    await client.emit_event("shipped")

    worker = client.new_worker(dt.WorkerOptions(version="2", poll_interval=0.05))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            assert await client.wait_result(versioned, new.task_id, timeout=10) == 2
            await trio.sleep(0.3)  # time to claim the old task, which it must not
            worker.shutdown()
    assert (await client.get_task(old.task_id)).state == "pending"
    assert CALLS == {"charge": 2}  # once per task: the old one was not replayed by "2"

    DEPLOYED["version"] = 1  # a worker still running the old code finishes it
    await run_until_idle(client, dt.WorkerOptions(version="1", poll_interval=0.05))
    assert await client.wait_result(versioned, old.task_id, timeout=10) == 1
    rows = await query(client, "SELECT task_id, version FROM {schema}.tasks")
    assert {r["task_id"]: r["version"] for r in rows} == {old.task_id: "1", new.task_id: "2"}


def test_a_worker_version_must_be_printable_text() -> None:
    for bad in ("", "x" * 201, "v\n1", 3):
        with pytest.raises(dt.InvalidInput, match="version"):
            dt.WorkerOptions(version=bad)  # type: ignore[arg-type]


# -- a step that raised: replayed as it happened -----------------------------------------


class PaymentDeclined(Exception):
    def __init__(self, reason: str, amount: int) -> None:
        super().__init__(reason, amount)
        self.reason = reason
        self.amount = amount


def decline() -> str:
    CALLS["charge"] = CALLS.get("charge", 0) + 1
    raise PaymentDeclined("card expired", 42)


@dt.task("saga")
async def saga(ctx: dt.TaskContext, p: None) -> str:
    try:
        await ctx.step("charge", decline)
        outcome = "charged"
    except PaymentDeclined as ex:  # compensate, then go on
        outcome = await ctx.step("notify", body(f"declined {ex.reason} {ex.amount}"))
    await ctx.await_event("ack")  # suspends: the resume replays everything above
    return outcome


async def test_a_caught_step_failure_is_replayed_not_run_again(client: dt.Durable) -> None:
    client.register(saga)
    spawned = await client.spawn(saga, None)
    await run_until_idle(client)
    await client.emit_event("ack")
    await run_until_idle(client)
    # The resume raised the same PaymentDeclined (type and arguments) at the step instead
    # of charging again, so the compensation replayed and the task finished.
    assert await client.wait_result(saga, spawned.task_id, timeout=10) == "declined card expired 42"
    assert CALLS == {"charge": 1, "declined card expired 42": 1}
    assert "$failed:charge" in await stored_names(client, spawned.task_id)


@dt.task("flaky-step")
async def flaky_step(ctx: dt.TaskContext, p: None) -> str:
    await ctx.step("before", body("before"))
    return await ctx.step("flaky", flaky)


def flaky() -> str:
    CALLS["flaky"] = CALLS.get("flaky", 0) + 1
    if CALLS["flaky"] == 1:
        raise RuntimeError("first time unlucky")
    return "ok"


async def test_a_step_failure_that_ended_the_attempt_runs_again_on_retry(
    client: dt.Durable,
) -> None:
    client.register(flaky_step)
    options = dt.SpawnOptions(retry=dt.RetryStrategy.none())
    spawned = await client.spawn(flaky_step, None, options=options)
    await run_until_idle(client)
    assert await client.wait_result(flaky_step, spawned.task_id, timeout=10) == "ok"
    assert CALLS == {"before": 1, "flaky": 2}
    assert (await client.get_task(spawned.task_id)).attempts == 2


@dt.task("local-error")
async def local_error(ctx: dt.TaskContext, p: None) -> str:
    class Unreachable(Exception):  # no importable name: cannot be rebuilt on replay
        pass

    def fail() -> None:
        CALLS["fail"] = CALLS.get("fail", 0) + 1
        raise Unreachable("gone")

    try:
        await ctx.step("fail", fail)
    except Exception as ex:  # noqa: BLE001  (first run: Unreachable; replay: StepFailed)
        seen = await ctx.step("seen", body("seen"))
        kind = "step-failed" if isinstance(ex, dt.StepFailed) else "own"
        await ctx.sleep_for("nap", 60)
        return f"{seen} {kind} {ex}"
    return "no error"


async def test_an_exception_that_cannot_be_rebuilt_replays_as_step_failed(
    client: dt.Durable,
) -> None:
    client.register(local_error)
    spawned = await client.spawn(local_error, None)
    await run_until_idle(client, skip_time=True)
    result = await client.wait_result(local_error, spawned.task_id, timeout=10)
    assert result.startswith("seen step-failed ")
    assert "Unreachable: gone" in result
    assert CALLS == {"fail": 1, "seen": 1}
