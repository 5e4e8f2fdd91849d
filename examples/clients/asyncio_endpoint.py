"""An asyncio endpoint (the body of a FastAPI or aiohttp handler): the order row and its
workflow commit together.

`durable_trio.aio.Durable` is opened once for the application's lifetime (FastAPI: in
its lifespan) and each request spawns through its own ``psycopg.AsyncConnection``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg
from shop import ORDERS_DDL, SCHEMA, Order, fulfil

import durable_trio.aio


async def place_order(client: durable_trio.aio.Durable, item: str, qty: int) -> dict[str, Any]:
    """The handler's body: insert the order, spawn its workflow, commit both at once."""
    url = os.environ["DURABLE_DATABASE_URL"]
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(ORDERS_DDL)
        cur = await conn.execute(
            "INSERT INTO shop_orders (item, qty) VALUES (%s, %s) RETURNING order_id",
            (item, qty),
        )
        row = await cur.fetchone()
        assert row is not None
        spawned = await client.spawn(fulfil, Order(row[0], item, qty), connection=conn)
        await conn.execute(
            "UPDATE shop_orders SET task_id = %s WHERE order_id = %s", (spawned.task_id, row[0])
        )
    return {"order_id": row[0], "task_id": str(spawned.task_id)}


async def main() -> None:
    async with durable_trio.aio.Durable.connect(schema=SCHEMA) as client:  # app lifespan
        placed = await place_order(client, "kettle", 2)
        print(placed)
        print(await client.wait_result(fulfil, placed["task_id"], timeout=60))


if __name__ == "__main__":
    asyncio.run(main())
