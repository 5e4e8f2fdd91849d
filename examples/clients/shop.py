"""The order workflow shared by the client examples: run it on trio workers with

    durable-trio worker shop:setup            # from this folder, DURABLE_DATABASE_URL set

and feed it from any Python: `sync_view.py` (blocking, Django-style) and
`asyncio_endpoint.py` (asyncio, FastAPI-style) insert an order and spawn its workflow in
one transaction.
"""

from __future__ import annotations

import os

import attrs

import durable_trio as dt

SCHEMA = os.environ.get("SHOP_SCHEMA", "durable")

ORDERS_DDL = """
CREATE TABLE IF NOT EXISTS shop_orders (
    order_id bigserial PRIMARY KEY,
    item text NOT NULL,
    qty integer NOT NULL,
    task_id uuid
)
"""


@attrs.frozen
class Order:
    order_id: int
    item: str
    qty: int


@dt.task("fulfil-order")
async def fulfil(ctx: dt.TaskContext, order: Order) -> str:
    reserved = await ctx.step("reserve", lambda: f"{order.qty} x {order.item} reserved")
    label = await ctx.step("label", lambda: f"label for order {order.order_id}")
    return f"{reserved}; {label}"


def setup(client: dt.Durable) -> None:
    """What `durable-trio worker shop:setup` calls: register the tasks to run."""
    client.register(fulfil)
