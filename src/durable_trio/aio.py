"""The asyncio client, for asyncio programs: a FastAPI or aiohttp endpoint, an asyncio
service. It spawns, emits, reads, cancels, retries and waits exactly as
`durable_trio.Durable` does (the same checks, statements and errors, from one
`ClientCore`), over a `psycopg_pool.AsyncConnectionPool`.

Workers stay trio: run them as processes of their own (``durable-trio worker APP``).
Spawn inside your own transaction with ``connection=`` a ``psycopg.AsyncConnection``:
the task exists when you commit, and never if you roll back::

    async with durable_trio.aio.Durable.connect(queue="orders") as client:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await conn.execute("INSERT INTO orders ...")
            await client.spawn(fulfil, Order(id), connection=conn)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from . import _sql
from ._db import CONNECT_ERRORS, unreachable
from ._ends import AsyncioEnds
from ._shell import (
    AsyncShell,
    Call,
    Connects,
    Opening,
    caller_connection,
    pool_errors,
    pool_options,
)

__all__ = ["Durable"]

T = TypeVar("T")


class Durable(
    AsyncShell[psycopg.AsyncConnection[Any]],
    Connects[AbstractAsyncContextManager["Durable"]],
):
    """An asyncio handle on one durable_trio schema and queue; `Durable.connect` opens
    one for an ``async with`` block. Use it from the event loop that opened it. Methods
    behave as those of the trio `durable_trio.Durable` of the same name."""

    _label = "durable_trio.aio.Durable"

    def _setup(self, pool_size: int) -> None:
        self._pool = AsyncConnectionPool(self.url, **pool_options(pool_size))
        self._ends = AsyncioEnds(self.url, self.schema)

    @classmethod
    @asynccontextmanager
    async def _open(cls, opening: Opening) -> AsyncIterator[Durable]:
        client = cls._made(opening)
        url, timeout = opening.url, opening.timeout
        try:
            conn = await psycopg.AsyncConnection.connect(
                url, connect_timeout=max(1, round(timeout))
            )
        except CONNECT_ERRORS as ex:
            raise unreachable(url, ex) from None
        await conn.close()  # reachable: fail fast, with a clear error, if not
        await client._pool.open(wait=True, timeout=timeout)
        try:
            if opening.migrate:
                await client.migrate()
            else:  # refused now, not at the first statement that finds something missing
                await client._execute(Call(_sql.check_schema(client.schema)))
            yield client
        finally:
            await client._ends.aclose()
            await client._pool.close()

    async def _execute(self, call: Call[T], *, transaction: bool = False) -> T:
        """As the blocking client's `_execute`, on the asyncio pool."""
        if call.connection is not None:
            return await _sql.run_async(
                caller_connection(call.connection, psycopg.AsyncConnection), call.op
            )
        with pool_errors(self.url) as pooled:
            async with self._pool.connection() as conn:
                pooled.conn = conn
                if not transaction:
                    return await _sql.run_async(conn, call.op)
                async with conn.transaction():
                    return await _sql.run_async(conn, call.op)

    async def migrate(self) -> list[int]:
        """Create or upgrade the schema (idempotent; concurrent callers are serialised)."""
        return await self._execute(Call(_sql.migrate(self.schema)), transaction=True)
