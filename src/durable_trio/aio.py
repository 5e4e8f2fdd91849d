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

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import psycopg
import sniffio
from psycopg_pool import AsyncConnectionPool

from . import _sql
from ._db import CONNECT_ERRORS, too_late, unreachable
from ._ends import AsyncioEnds
from ._errors import ConfigurationError
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
        self._pool = AsyncConnectionPool(self.url, **pool_options(pool_size, asynchronous=True))
        self._ends = AsyncioEnds(self.url, self.schema)

    @classmethod
    @asynccontextmanager
    async def _open(cls, opening: Opening) -> AsyncIterator[Durable]:
        _require_asyncio()
        client = cls._made(opening)
        try:
            # One connection first: a clear error, if the database is unreachable.
            await _reachable(opening.url, opening.timeout)
            with pool_errors(opening.url):
                await client._pool.open(wait=True, timeout=opening.timeout)
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


async def _reachable(url: str, timeout: float) -> None:
    """Open one connection and close it; `DatabaseUnavailable` (password redacted) if the
    database does not answer within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            conn = await psycopg.AsyncConnection.connect(url)
    except TimeoutError:  # an OSError: caught before CONNECT_ERRORS
        error = too_late(url, timeout)
    except CONNECT_ERRORS as ex:
        error = unreachable(url, ex)
    else:
        await conn.close()
        return
    raise error  # outside the handler: see `unreachable`


def _require_asyncio() -> None:
    """This client runs on an asyncio event loop; say which one to use elsewhere
    (asyncio's own error, "no running event loop", names no way out)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return
    try:
        where = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        where = "code that is not async"
    raise ConfigurationError(
        f"durable_trio.aio.Durable is the asyncio client and this is {where}: use "
        "durable_trio.Durable under trio, durable_trio.sync.Durable in blocking code"
    )
