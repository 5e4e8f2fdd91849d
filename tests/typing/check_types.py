"""What mypy infers for the typed API (checked by `mypy` in the lint and types session;
never run). Each `assert_type` fails the type check if the inference drifts."""

from __future__ import annotations

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
