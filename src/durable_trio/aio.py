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
import math
import os
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload
from uuid import UUID

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from . import _sql
from ._clientcore import ClientCore, SpawnResult, TaskInfo, TaskRef, poll_delays
from ._core.durations import Duration, to_seconds
from ._core.options import SpawnOptions
from ._core.states import TaskState
from ._db import CONNECT_ERRORS, CONNECTION_ERRORS, redact_url, unreachable
from ._errors import ConfigurationError, DatabaseUnavailable, InvalidInput, WaitTimeout
from ._hooks import Hooks
from ._inspect import QueueStats, RetryResult, StepInfo, TaskPage
from ._task import Task, TaskDefinition

__all__ = ["Durable"]

R = TypeVar("R")
T = TypeVar("T")
URL_ENV = "DURABLE_DATABASE_URL"


class Durable:
    """An asyncio handle on one durable_trio schema and queue; `Durable.connect` opens
    one for an ``async with`` block. Use it from the event loop that opened it. Methods
    behave as those of the trio `durable_trio.Durable` of the same name."""

    def __init__(
        self, url: str, *, queue: str, schema: str, pool_size: int, hooks: Hooks | None = None
    ) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise InvalidInput(f"pool_size must be a positive integer, got {pool_size!r}")
        self.url = url
        self._core = ClientCore(queue=queue, schema=schema, hooks=hooks)
        self.queue = self._core.queue
        self.schema = self._core.schema
        self._pool = AsyncConnectionPool(
            url, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, open=False
        )

    def __repr__(self) -> str:
        where = f"{redact_url(self.url)} schema={self.schema} queue={self.queue}"
        return f"<durable_trio.aio.Durable {where}>"

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
        resolved = url or os.environ.get(URL_ENV)
        if not resolved:
            raise ConfigurationError(
                f"no database URL: pass url=... or set {URL_ENV} "
                "(e.g. postgresql://user:password@localhost:5432/dbname)"
            )
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
            await client._pool.close()

    # -- running operations -----------------------------------------------------------

    async def _run(self, op: _sql.Op[T], connection: Any = None, *, transaction: bool = False) -> T:
        """Drive `op` on the caller's connection (in its open transaction) or a pooled
        one; a connection that breaks or a pool that cannot connect is
        `DatabaseUnavailable`, other database errors pass through."""
        if connection is not None:
            return await _sql.run_async(_caller_connection(connection), op)
        try:
            async with self._pool.connection() as conn:
                try:
                    if transaction:
                        async with conn.transaction():
                            return await _sql.run_async(conn, op)
                    return await _sql.run_async(conn, op)
                except CONNECTION_ERRORS as ex:
                    if not conn.broken:
                        raise
                    raise DatabaseUnavailable(f"lost the database connection: {ex}") from ex
        except PoolTimeout as ex:
            raise DatabaseUnavailable(f"no connection to {redact_url(self.url)}: {ex}") from ex

    async def _op(self, op: _sql.Op[T], connection: Any = None) -> T:
        return await self._run(self._core.op(op), connection)

    async def _read(self, op: _sql.Op[T]) -> T:
        return await self._run(self._core.read(op))

    # -- schema and registry ----------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Create or upgrade the schema (idempotent; concurrent callers are serialised)."""
        return await self._run(_sql.migrate(self.schema), transaction=True)

    def register(self, *tasks: TaskRef) -> None:
        """Make tasks known here, so `spawn_by_name` checks their params and
        `wait_result` types their results by name (no worker runs here)."""
        self._core.register(*tasks)

    # -- spawning and events ----------------------------------------------------------

    async def spawn(
        self,
        task: TaskDefinition[Any, R] | type[Task[Any, R]],
        params: Any,
        *,
        options: SpawnOptions | None = None,
        connection: psycopg.AsyncConnection[Any] | None = None,
    ) -> SpawnResult[R]:
        return await self._op(self._core.spawn(task, params, options), connection)

    async def spawn_by_name(
        self,
        name: str,
        params: Any,
        *,
        options: SpawnOptions | None = None,
        connection: psycopg.AsyncConnection[Any] | None = None,
    ) -> SpawnResult[Any]:
        return await self._op(self._core.spawn_by_name(name, params, options), connection)

    async def spawn_many(
        self,
        task: TaskRef | str,
        params: Iterable[Any],
        *,
        options: SpawnOptions | None = None,
        idempotency_keys: Iterable[str | None] | None = None,
    ) -> list[SpawnResult[Any]]:
        return await self._op(self._core.spawn_many(task, params, options, idempotency_keys))

    async def emit_event(
        self,
        name: str,
        payload: Any = None,
        *,
        queue: str | None = None,
        connection: psycopg.AsyncConnection[Any] | None = None,
    ) -> int:
        return await self._op(self._core.emit(name, payload, queue), connection)

    # -- reading and steering ---------------------------------------------------------

    async def get_task(self, task_id: UUID) -> TaskInfo:
        return await self._read(self._core.get_task(task_id))

    async def list_tasks(
        self,
        *,
        queue: str | None = None,
        state: TaskState | str | None = None,
        name: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        parent: UUID | None = None,
        limit: int = 100,
        after: UUID | None = None,
    ) -> TaskPage:
        return await self._read(
            self._core.list_tasks(
                queue=queue,
                state=state,
                name=name,
                created_after=created_after,
                created_before=created_before,
                parent=parent,
                limit=limit,
                after=after,
            )
        )

    async def steps(self, task_id: UUID) -> list[StepInfo]:
        return await self._read(self._core.steps(task_id))

    async def queue_stats(
        self,
        queue: str | None = None,
        *,
        window: Duration = timedelta(hours=1),
        unserved_after: Duration = timedelta(minutes=5),
    ) -> QueueStats:
        span = timedelta(seconds=to_seconds(window, what="window"))
        after = timedelta(seconds=to_seconds(unserved_after, what="unserved_after"))
        return await self._read(self._core.queue_stats(queue, span, after))

    async def cancel(self, task_id: UUID, reason: str = "cancelled by client") -> bool:
        return await self._op(self._core.cancel(task_id, reason))

    async def retry(
        self, task_id: UUID, *, max_attempts: int | None = None, from_scratch: bool = False
    ) -> RetryResult:
        return await self._op(self._core.retry(task_id, max_attempts, from_scratch))

    @overload
    async def wait_result(self, task: SpawnResult[R], /, *, timeout: float | None = None) -> R: ...

    @overload
    async def wait_result(
        self,
        task: TaskDefinition[Any, R] | type[Task[Any, R]],
        task_id: UUID | str,
        *,
        timeout: float | None = None,
    ) -> R: ...

    @overload
    async def wait_result(
        self, task: str | None, task_id: UUID | str, *, timeout: float | None = None
    ) -> Any: ...

    async def wait_result(
        self,
        task: TaskDefinition[Any, Any] | type[Task[Any, Any]] | SpawnResult[Any] | str | None,
        task_id: UUID | str | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Wait until the task ends (``wait_result(spawned)`` or ``wait_result(task,
        task_id)``); its typed result, or `TaskFailed` / `TaskCancelled`
        / `WaitTimeout` after `timeout` seconds (the task itself goes on)."""
        waiting = self._core.waiting(task, task_id)
        limit = math.inf if timeout is None else to_seconds(timeout, what="timeout")
        deadline = time.monotonic() + limit
        for delay in poll_delays():
            done, value = waiting.outcome(await self._op(self._core.task_row(waiting.task_id)))
            if done:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"task {waiting.task_id} did not finish within {limit:g} seconds")
            await asyncio.sleep(min(delay, left))
        raise AssertionError("poll_delays never ends")  # pragma: no cover


def _caller_connection(conn: object) -> psycopg.AsyncConnection[Any]:
    """The `connection=` of a spawn or emit: an asyncio psycopg connection, whose open
    transaction the write joins."""
    if isinstance(conn, psycopg.AsyncConnection):
        return conn
    raise InvalidInput(
        "connection must be a psycopg.AsyncConnection (to join its open transaction), "
        f"got {type(conn).__name__}"
    )
