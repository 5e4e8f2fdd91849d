"""Steps that call blocking code (through a thread) or asyncio-only code (trio-asyncio)."""

from __future__ import annotations

import asyncio
import threading

import trio
import trio_asyncio

import durable_trio as dt
from durable_trio.testing import run_until_idle

THREADS: list[str] = []


def blocking_lookup(key: str) -> str:
    THREADS.append(threading.current_thread().name)
    return key.upper()


async def asyncio_only(key: str) -> str:
    # Fails outside an asyncio loop: proves trio-asyncio really ran it on one.
    asyncio.get_running_loop()
    await asyncio.sleep(0)
    return f"aio:{key}"


@dt.task("mixed-io")
async def mixed_io(ctx: dt.TaskContext, key: str) -> list[str]:
    threaded = await ctx.step("lookup", trio.to_thread.run_sync, blocking_lookup, key)
    async with trio_asyncio.open_loop():
        aio = await ctx.step("aio", trio_asyncio.aio_as_trio(asyncio_only), key)
    return [threaded, aio]


async def test_thread_and_asyncio_steps(client: dt.Durable) -> None:
    client.register(mixed_io)
    THREADS.clear()
    spawned = await client.spawn(mixed_io, "k")
    await run_until_idle(client)
    assert await client.wait_result(mixed_io, spawned.task_id, timeout=5) == ["K", "aio:k"]
    assert THREADS
    assert THREADS[0] != threading.main_thread().name
