"""Spawning one task at a time from each client (trio, blocking, asyncio) beside two
baselines on the same driver: one raw INSERT + NOTIFY round trip (the raw ceiling's
spawn statement, one row in a minimal table), and the client's own spawn statement
(`spawn_one`, with the values the client would send) executed with no library around
it. The first ratio includes what durable_trio's schema writes per spawn (a task and its
first run); the second is the client layer's own cost.

Each round runs raw, client and statement one after another; two rounds, keeping the
better rate of each, so a slow moment of the host does not land on one side only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import psycopg
import trio

import durable_trio as dt
import durable_trio.aio
import durable_trio.sync
import raw_ceiling
from dt_bench import drop_schema
from durable_trio._clientcore import ClientCore, queries
from durable_trio._core.ids import uuid7_texts
from durable_trio._db import connect as trio_connect

QUEUE = "bench"
ROUNDS = 2


def _params(i: int) -> str:
    return json.dumps({"x": i})


def _best(rounds: list[tuple[float, float, float]]) -> dict[str, float]:
    raw, client, statement = (max(r[k] for r in rounds) for k in range(3))
    return {
        "raw_per_s": raw,
        "client_per_s": client,
        "ratio": client / raw,
        "statement_per_s": statement,
        "ratio_to_statement": client / statement,
    }


class _Statement:
    """The client's spawn statement and the values it would send for spawn number i."""

    def __init__(self, schema: str) -> None:
        self.query = queries(schema)["spawn_one"]
        self.plan = ClientCore(queue=QUEUE, schema=schema).plan("one_step", None)

    def values(self, i: int) -> tuple[Any, ...]:
        task_id, run_id = uuid7_texts(2)
        return (task_id, run_id, json.dumps({"i": i}), self.plan.key, *self.plan.shared)


def _rate(n: int, seconds: float) -> float:
    return n / seconds


def sync_pair(url: str, schema: str, n: int) -> tuple[float, float, float]:
    spawn = raw_ceiling.q(raw_ceiling.SPAWN, schema + "_raw")
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        for i in range(n):
            conn.execute(spawn, (QUEUE, _params(i), QUEUE))
        raw = _rate(n, time.perf_counter() - t0)
    with durable_trio.sync.Durable.connect(url, schema=schema, queue=QUEUE) as client:
        t0 = time.perf_counter()
        for i in range(n):
            client.spawn_by_name("one_step", {"i": i})
        spawned = _rate(n, time.perf_counter() - t0)
    bare = _Statement(schema)
    with psycopg.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        for i in range(n):
            conn.execute(bare.query, bare.values(i))
        return raw, spawned, _rate(n, time.perf_counter() - t0)


async def aio_pair(url: str, schema: str, n: int) -> tuple[float, float, float]:
    spawn = raw_ceiling.q(raw_ceiling.SPAWN, schema + "_raw")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        for i in range(n):
            await conn.execute(spawn, (QUEUE, _params(i), QUEUE))
        raw = _rate(n, time.perf_counter() - t0)
    async with durable_trio.aio.Durable.connect(url, schema=schema, queue=QUEUE) as client:
        t0 = time.perf_counter()
        for i in range(n):
            await client.spawn_by_name("one_step", {"i": i})
        spawned = _rate(n, time.perf_counter() - t0)
    bare = _Statement(schema)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        for i in range(n):
            await conn.execute(bare.query, bare.values(i))
        return raw, spawned, _rate(n, time.perf_counter() - t0)


async def trio_pair(url: str, schema: str, n: int) -> tuple[float, float, float]:
    spawn = raw_ceiling.q(raw_ceiling.SPAWN, schema + "_raw")
    conn = await trio_connect(url)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            await conn.execute(spawn, (QUEUE, _params(i), QUEUE))
        raw = _rate(n, time.perf_counter() - t0)
    finally:
        await conn.close()
    async with dt.Durable.connect(url, schema=schema, queue=QUEUE) as client:
        t0 = time.perf_counter()
        for i in range(n):
            await client.spawn_by_name("one_step", {"i": i})
        spawned = _rate(n, time.perf_counter() - t0)
    bare = _Statement(schema)
    conn = await trio_connect(url)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            await conn.execute(bare.query, bare.values(i))
        return raw, spawned, _rate(n, time.perf_counter() - t0)
    finally:
        await conn.close()


def client_spawn(url: str, schema: str, n: int) -> dict[str, Any]:
    """Spawns per second, one by one, from each client and raw on its driver."""
    raw_ceiling.setup(url, schema + "_raw")
    runners: dict[str, Callable[[], tuple[float, float, float]]] = {
        "trio": lambda: trio.run(trio_pair, url, schema, n),
        "sync": lambda: sync_pair(url, schema, n),
        "asyncio": lambda: asyncio.run(aio_pair(url, schema, n)),
    }
    try:
        return {name: _best([run() for _ in range(ROUNDS)]) for name, run in runners.items()}
    finally:
        raw_ceiling.drop(url, schema + "_raw")
        drop_schema(url, schema)
