"""Spawning one task at a time from each client (trio, blocking, asyncio) beside one raw
INSERT + NOTIFY round trip on the same driver (the raw ceiling's spawn statement).

Each pair runs twice, alternating raw and client, and keeps the better rate of each, so
a slow moment of the host does not land on one side only.
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
from durable_trio._db import connect as trio_connect

QUEUE = "bench"
ROUNDS = 2


def _params(i: int) -> str:
    return json.dumps({"x": i})


def _best(pairs: list[tuple[float, float]]) -> dict[str, float]:
    raw = max(p[0] for p in pairs)
    client = max(p[1] for p in pairs)
    return {"raw_per_s": raw, "client_per_s": client, "ratio": client / raw}


def _rate(n: int, seconds: float) -> float:
    return n / seconds


def sync_pair(url: str, schema: str, n: int) -> tuple[float, float]:
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
        return raw, _rate(n, time.perf_counter() - t0)


async def aio_pair(url: str, schema: str, n: int) -> tuple[float, float]:
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
        return raw, _rate(n, time.perf_counter() - t0)


async def trio_pair(url: str, schema: str, n: int) -> tuple[float, float]:
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
        return raw, _rate(n, time.perf_counter() - t0)


def client_spawn(url: str, schema: str, n: int) -> dict[str, Any]:
    """Spawns per second, one by one, from each client and raw on its driver."""
    raw_ceiling.setup(url, schema + "_raw")
    runners: dict[str, Callable[[], tuple[float, float]]] = {
        "trio": lambda: trio.run(trio_pair, url, schema, n),
        "sync": lambda: sync_pair(url, schema, n),
        "asyncio": lambda: asyncio.run(aio_pair(url, schema, n)),
    }
    try:
        return {name: _best([run() for _ in range(ROUNDS)]) for name, run in runners.items()}
    finally:
        raw_ceiling.drop(url, schema + "_raw")
        drop_schema(url, schema)
