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
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from . import _sql
from ._db import CONNECT_ERRORS, unreachable
from ._ends import AsyncioEnds
from ._errors import InvalidInput
from ._hooks import Hooks
from ._shell import AsyncShell, Call, pool_errors, pool_options, resolve_url

__all__ = ["Durable"]

R = TypeVar("R")
T = TypeVar("T")
URL_ENV = "DURABLE_DATABASE_URL"


class Durable(AsyncShell[psycopg.AsyncConnection[Any]]):
    """An asyncio handle on one durable_trio schema and queue; `Durable.connect` opens
    one for an ``async with`` block. Use it from the event loop that opened it. Methods
    behave as those of the trio `durable_trio.Durable` of the same name."""

    _label = "durable_trio.aio.Durable"

    def _setup(self, pool_size: int) -> None:
        self._pool = AsyncConnectionPool(self.url, **pool_options(pool_size))
        self._ends = AsyncioEnds(self.url, self.schema)

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str | None = None,
        *,
        queue: str = "default",
        schema: str = "durable",
        migrate: bool = True,
        pool_size: int = 10,
        hooks: Hooks | None = None,
        timeout: float = 30.0,
    ) -> AsyncIterator[Durable]:
        """Open a client for the block. `url` defaults to ``$DURABLE_DATABASE_URL``; with
        ``migrate=True`` the schema is created or upgraded first. `DatabaseUnavailable`
        (password redacted) if the database cannot be reached within `timeout` seconds."""
        resolved = resolve_url(url)
        client = cls(resolved, queue=queue, schema=schema, pool_size=pool_size, hooks=hooks)
        try:
            conn = await psycopg.AsyncConnection.connect(
                resolved, connect_timeout=max(1, round(timeout))
            )
        except CONNECT_ERRORS as ex:
            raise unreachable(resolved, ex) from None
        await conn.close()  # reachable: fail fast, with a clear error, if not
        await client._pool.open(wait=True, timeout=timeout)
        try:
            if migrate:
                await client.migrate()
            yield client
        finally:
            await client._ends.aclose()
            await client._pool.close()

    async def _execute(self, call: Call[T], *, transaction: bool = False) -> T:
        """As the blocking client's `_execute`, on the asyncio pool."""
        if call.connection is not None:
            return await _sql.run_async(_caller_connection(call.connection), call.op)
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


def _caller_connection(conn: object) -> psycopg.AsyncConnection[Any]:
    """The `connection=` of a spawn or emit: an asyncio psycopg connection, whose open
    transaction the write joins."""
    if isinstance(conn, psycopg.AsyncConnection):
        return conn
    raise InvalidInput(
        "connection must be a psycopg.AsyncConnection (to join its open transaction), "
        f"got {type(conn).__name__}"
    )
