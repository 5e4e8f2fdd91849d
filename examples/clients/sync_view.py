"""A blocking, Django-style view: the order row and its workflow commit together.

`durable_trio.sync.Durable` is opened once per process (in Django, in
``AppConfig.ready``) and shared by every request; each request writes through its own
connection, and the spawn joins that connection's transaction: a rolled-back request
leaves no task behind, a committed one always has its task.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import psycopg
from shop import ORDERS_DDL, SCHEMA, Order, fulfil

import durable_trio.sync


@cache
def durable() -> durable_trio.sync.Durable:
    return durable_trio.sync.Durable.connect(schema=SCHEMA)


def place_order(item: str, qty: int) -> dict[str, Any]:
    """The view's body: insert the order, spawn its workflow, commit both at once."""
    with psycopg.connect(os.environ["DURABLE_DATABASE_URL"]) as conn:
        conn.execute(ORDERS_DDL)
        row = conn.execute(
            "INSERT INTO shop_orders (item, qty) VALUES (%s, %s) RETURNING order_id",
            (item, qty),
        ).fetchone()
        assert row is not None
        spawned = durable().spawn(fulfil, Order(row[0], item, qty), connection=conn)
        conn.execute(
            "UPDATE shop_orders SET task_id = %s WHERE order_id = %s", (spawned.task_id, row[0])
        )
    # Leaving the block committed the order and the task together.
    return {"order_id": row[0], "task_id": str(spawned.task_id)}


if __name__ == "__main__":
    print(place_order("teapot", 1))
