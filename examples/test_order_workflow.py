"""Testing a workflow with durable_trio's pytest fixtures (docs/testing.md shows this file).

Needs only `pip install durable_trio pytest pytest-trio` and, in pytest's configuration,
``trio_mode = true``: the fixtures come from durable_trio's pytest plugin.
"""

from __future__ import annotations

from datetime import timedelta

import attrs

import durable_trio as dt
from durable_trio.testing import DatabaseClock, RunOutcome, run_once, run_until_idle


@attrs.frozen
class Order:
    order_id: str
    amount: int


CHARGES: list[str] = []  # stands in for a payment API


async def charge(order: Order) -> str:
    CHARGES.append(order.order_id)
    return f"ch_{order.order_id}"


@dt.task("fulfil-order")
async def fulfil_order(ctx: dt.TaskContext, order: Order) -> str:
    charge_id = await ctx.step("charge", charge, order)
    try:
        await ctx.await_event(f"shipped:{order.order_id}", timeout=timedelta(days=3))
    except dt.EventTimeout:
        return await ctx.step("refund", lambda: f"refunded {charge_id}", result_type=str)
    return f"shipped, paid by {charge_id}"


async def test_an_order_ships_when_the_warehouse_says_so(durable_client: dt.Durable) -> None:
    CHARGES.clear()
    durable_client.register(fulfil_order)
    order = await durable_client.spawn(fulfil_order, Order("A-1", 1200))

    report = await run_once(durable_client)  # charges, then waits for the event
    assert report.suspended == [order.task_id]
    assert CHARGES == ["A-1"]

    await durable_client.emit_event("shipped:A-1")
    report = await run_once(durable_client)  # resumes: the charge is not made again
    assert report.completed == [order.task_id]
    assert CHARGES == ["A-1"]
    assert await durable_client.wait_result(fulfil_order, order.task_id) == (
        "shipped, paid by ch_A-1"
    )


async def test_an_order_never_shipped_is_refunded_after_three_days(
    durable_client: dt.Durable, durable_clock: DatabaseClock
) -> None:
    CHARGES.clear()
    durable_client.register(fulfil_order)
    order = await durable_client.spawn(fulfil_order, Order("B-2", 300))
    start = await durable_clock.now()

    # Three days pass in an instant: the clock jumps to the event wait's timeout.
    await run_until_idle(durable_client, skip_time=True)

    assert await durable_client.wait_result(fulfil_order, order.task_id) == "refunded ch_B-2"
    assert CHARGES == ["B-2"]
    assert await durable_clock.now() - start >= timedelta(days=3)


async def test_nothing_runs_before_it_is_due(
    durable_client: dt.Durable, durable_clock: DatabaseClock
) -> None:
    durable_client.register(fulfil_order)
    later = dt.SpawnOptions(delay=timedelta(hours=1))
    order = await durable_client.spawn(fulfil_order, Order("C-3", 50), options=later)

    assert (await run_once(durable_client)).claimed == 0
    await durable_clock.advance(timedelta(hours=1))
    report = await run_once(durable_client)
    assert [(run.task_id, run.outcome) for run in report.runs] == [
        (order.task_id, RunOutcome.SUSPENDED)
    ]
