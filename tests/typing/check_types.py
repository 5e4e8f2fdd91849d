"""What mypy infers for the typed API (checked by `mypy` in the lint and types session;
never run). Each `assert_type` fails the type check if the inference drifts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, assert_type

import attrs

import durable_trio as dt
import durable_trio.aio
import durable_trio.sync


@attrs.frozen
class Order:
    item: str


@attrs.frozen
class Receipt:
    total: int


@dt.task("buy")
async def buy(ctx: dt.TaskContext, order: Order) -> Receipt:
    return Receipt(1)


async def trio_client(client: dt.Durable) -> None:
    spawned = await client.spawn(buy, Order("tea"))
    assert_type(spawned, dt.SpawnResult[Receipt])
    assert_type(await client.wait_result(spawned), Receipt)
    assert_type(await client.wait_result(buy, spawned.task_id), Receipt)
    assert_type(await client.wait_result(None, spawned.task_id), Any)
    by_name = await client.spawn_by_name("buy", {"item": "tea"})
    assert_type(by_name, dt.SpawnResult[Any])
    assert_type(await client.get_task(spawned.task_id), dt.TaskInfo)
    assert_type(await client.list_tasks(), dt.TaskPage)


def sync_client(client: durable_trio.sync.Durable) -> None:
    spawned = client.spawn(buy, Order("tea"))
    assert_type(spawned, dt.SpawnResult[Receipt])
    assert_type(client.wait_result(spawned), Receipt)
    assert_type(client.wait_result("buy", spawned.task_id), Any)


async def aio_client(client: durable_trio.aio.Durable) -> None:
    spawned = await client.spawn(buy, Order("tea"))
    assert_type(spawned, dt.SpawnResult[Receipt])
    assert_type(await client.wait_result(spawned), Receipt)
    assert_type(await client.wait_result(buy, spawned.task_id), Receipt)


@attrs.frozen
class Parcel:
    weight: int


@dt.task("weigh")
async def weigh(ctx: dt.TaskContext, order: Order) -> Parcel:
    return Parcel(3)


@dt.task("ship")
async def ship(ctx: dt.TaskContext, order: Order) -> int:
    handle = await ctx.spawn("weigh", weigh, order)
    assert_type(handle, dt.TaskHandle[Parcel])
    parcel = await ctx.join("weighed", handle)
    assert_type(parcel, Parcel)
    by_name = await ctx.spawn("weigh-by-name", "weigh", {"item": "x"})
    assert_type(by_name, dt.TaskHandle[Any])
    assert_type(await ctx.step("double", lambda: parcel.weight * 2), int)
    assert_type(await ctx.step("typed", weigh_sync, result_type=Parcel), Parcel)
    return parcel.weight


def weigh_sync() -> Parcel:
    return Parcel(1)


async def fetch_page(url: str) -> str:
    return url


@dt.task("steps-and-events")
async def steps_and_events(ctx: dt.TaskContext, order: Order) -> None:
    assert_type(await ctx.step("fetch", fetch_page, "https://example.com"), str)
    assert_type(await ctx.step("weigh", weigh_sync), Parcel)
    assert_type(await ctx.await_event("paid", type=Receipt), Receipt)
    assert_type(await ctx.await_event("anything"), Any)


async def results_as_objects(client: dt.Durable, aio: durable_trio.aio.Durable) -> None:
    spawned = await client.spawn(buy, Order("tea"))
    print(await client.wait_result(spawned))  # print takes object: R is covariant
    print(await client.wait_result(buy, spawned.task_id))
    print(await aio.wait_result(buy, spawned.task_id))
    await client.wait_result(spawned, timeout=timedelta(seconds=3))


def sync_results_as_objects(client: durable_trio.sync.Durable) -> None:
    spawned = client.spawn(buy, Order("tea"))
    print(client.wait_result(spawned))
    print(client.wait_result(buy, spawned.task_id, timeout=timedelta(seconds=3)))
