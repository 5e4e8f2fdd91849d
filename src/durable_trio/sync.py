"""The blocking client, for code that is not async: a Django or Flask view, a script, a
cron job. It spawns, emits, reads, cancels, retries and waits exactly as
`durable_trio.Durable` does (the same checks, statements and errors, from one
`ClientCore`), over a `psycopg_pool.ConnectionPool`.

Workers stay trio: run them as processes of their own (``durable-trio worker APP``) or
in a trio thread. Spawn inside your own transaction with ``connection=`` a
``psycopg.Connection``: the task exists when you commit, and never if you roll back::

    client = durable_trio.sync.Durable.connect(queue="orders")   # once, at start-up
    with psycopg.connect(url) as conn:                            # per request
        conn.execute("INSERT INTO orders ...")
        client.spawn(fulfil, Order(id), connection=conn)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar, overload
from uuid import UUID

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

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
    """A blocking handle on one durable_trio schema and queue; `Durable.connect` opens
    one. Safe to share between threads. Methods behave as those of the trio
    `durable_trio.Durable` of the same name."""

    def __init__(
        self, url: str, *, queue: str, schema: str, pool_size: int, hooks: Hooks | None = None
    ) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise InvalidInput(f"pool_size must be a positive integer, got {pool_size!r}")
        self.url = url
        self._core = ClientCore(queue=queue, schema=schema, hooks=hooks)
        self.queue = self._core.queue
        self.schema = self._core.schema
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, open=False
        )

    def __repr__(self) -> str:
        where = f"{redact_url(self.url)} schema={self.schema} queue={self.queue}"
        return f"<durable_trio.sync.Durable {where}>"

    @classmethod
    def connect(
        cls,
        url: str | None = None,
        *,
        queue: str = "default",
        schema: str = "durable",
        migrate: bool = True,
        pool_size: int = 10,
        hooks: Hooks | None = None,
        timeout: float = 30.0,
    ) -> Durable:
        """Open a client (close it with `close`, or use it as a context manager). `url`
        defaults to ``$DURABLE_DATABASE_URL``; with ``migrate=True`` the schema is created
        or upgraded first. `DatabaseUnavailable` (password redacted) if the database
        cannot be reached within `timeout` seconds."""
        resolved = url or os.environ.get(URL_ENV)
        if not resolved:
            raise ConfigurationError(
                f"no database URL: pass url=... or set {URL_ENV} "
                "(e.g. postgresql://user:password@localhost:5432/dbname)"
            )
        client = cls(resolved, queue=queue, schema=schema, pool_size=pool_size, hooks=hooks)
        try:
            with psycopg.connect(resolved, connect_timeout=max(1, round(timeout))):
                pass  # fail fast, with a clear error, if the database is unreachable
        except CONNECT_ERRORS as ex:
            raise unreachable(resolved, ex) from None
        client._pool.open(wait=True, timeout=timeout)
        try:
            if migrate:
                client.migrate()
        except BaseException:
            client.close()
            raise
        return client

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- running operations -----------------------------------------------------------

    def _run(self, op: _sql.Op[T], connection: Any = None, *, transaction: bool = False) -> T:
        """Drive `op` on the caller's connection (in its open transaction) or a pooled
        one; a connection that breaks or a pool that cannot connect is
        `DatabaseUnavailable`, other database errors pass through."""
        if connection is not None:
            return _sql.run_blocking(_caller_connection(connection), op)
        try:
            with self._pool.connection() as conn:
                try:
                    if transaction:
                        with conn.transaction():
                            return _sql.run_blocking(conn, op)
                    return _sql.run_blocking(conn, op)
                except CONNECTION_ERRORS as ex:
                    if not conn.broken:
                        raise
                    raise DatabaseUnavailable(f"lost the database connection: {ex}") from ex
        except PoolTimeout as ex:
            raise DatabaseUnavailable(f"no connection to {redact_url(self.url)}: {ex}") from ex

    def _op(self, op: _sql.Op[T], connection: Any = None) -> T:
        return self._run(self._core.op(op), connection)

    def _read(self, op: _sql.Op[T]) -> T:
        return self._run(self._core.read(op))

    # -- schema and registry ----------------------------------------------------------

    def migrate(self) -> list[int]:
        """Create or upgrade the schema (idempotent; concurrent callers are serialised)."""
        return self._run(_sql.migrate(self.schema), transaction=True)

    def register(self, *tasks: TaskRef) -> None:
        """Make tasks known here, so `spawn_by_name` checks their params and
        `wait_result` types their results by name (no worker runs here)."""
        self._core.register(*tasks)

    # -- spawning and events ----------------------------------------------------------

    def spawn(
        self,
        task: TaskDefinition[Any, R] | type[Task[Any, R]],
        params: Any,
        *,
        options: SpawnOptions | None = None,
        connection: psycopg.Connection[Any] | None = None,
    ) -> SpawnResult[R]:
        return self._op(self._core.spawn(task, params, options), connection)

    def spawn_by_name(
        self,
        name: str,
        params: Any,
        *,
        options: SpawnOptions | None = None,
        connection: psycopg.Connection[Any] | None = None,
    ) -> SpawnResult[Any]:
        return self._op(self._core.spawn_by_name(name, params, options), connection)

    def spawn_many(
        self,
        task: TaskRef | str,
        params: Iterable[Any],
        *,
        options: SpawnOptions | None = None,
        idempotency_keys: Iterable[str | None] | None = None,
    ) -> list[SpawnResult[Any]]:
        return self._op(self._core.spawn_many(task, params, options, idempotency_keys))

    def emit_event(
        self,
        name: str,
        payload: Any = None,
        *,
        queue: str | None = None,
        connection: psycopg.Connection[Any] | None = None,
    ) -> int:
        return self._op(self._core.emit(name, payload, queue), connection)

    # -- reading and steering ---------------------------------------------------------

    def get_task(self, task_id: UUID) -> TaskInfo:
        return self._read(self._core.get_task(task_id))

    def list_tasks(
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
        return self._read(
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

    def steps(self, task_id: UUID) -> list[StepInfo]:
        return self._read(self._core.steps(task_id))

    def queue_stats(
        self,
        queue: str | None = None,
        *,
        window: Duration = timedelta(hours=1),
        unserved_after: Duration = timedelta(minutes=5),
    ) -> QueueStats:
        span = timedelta(seconds=to_seconds(window, what="window"))
        after = timedelta(seconds=to_seconds(unserved_after, what="unserved_after"))
        return self._read(self._core.queue_stats(queue, span, after))

    def cancel(self, task_id: UUID, reason: str = "cancelled by client") -> bool:
        return self._op(self._core.cancel(task_id, reason))

    def retry(
        self, task_id: UUID, *, max_attempts: int | None = None, from_scratch: bool = False
    ) -> RetryResult:
        return self._op(self._core.retry(task_id, max_attempts, from_scratch))

    @overload
    def wait_result(self, task: SpawnResult[R], /, *, timeout: float | None = None) -> R: ...

    @overload
    def wait_result(
        self,
        task: TaskDefinition[Any, R] | type[Task[Any, R]],
        task_id: UUID | str,
        *,
        timeout: float | None = None,
    ) -> R: ...

    @overload
    def wait_result(
        self, task: str | None, task_id: UUID | str, *, timeout: float | None = None
    ) -> Any: ...

    def wait_result(
        self,
        task: TaskDefinition[Any, Any] | type[Task[Any, Any]] | SpawnResult[Any] | str | None,
        task_id: UUID | str | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Block until the task ends (``wait_result(spawned)`` or ``wait_result(task,
        task_id)``); its typed result, or `TaskFailed` / `TaskCancelled`
        / `WaitTimeout` after `timeout` seconds (the task itself goes on)."""
        waiting = self._core.waiting(task, task_id)
        limit = math.inf if timeout is None else to_seconds(timeout, what="timeout")
        deadline = time.monotonic() + limit
        for delay in poll_delays():
            done, value = waiting.outcome(self._op(self._core.task_row(waiting.task_id)))
            if done:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"task {waiting.task_id} did not finish within {limit:g} seconds")
            time.sleep(min(delay, left))
        raise AssertionError("poll_delays never ends")  # pragma: no cover


def _caller_connection(conn: object) -> psycopg.Connection[Any]:
    """The `connection=` of a spawn or emit: a blocking psycopg connection, whose open
    transaction the write joins."""
    if isinstance(conn, psycopg.Connection):
        return conn
    raise InvalidInput(
        "connection must be a psycopg.Connection (to join its open transaction), "
        f"got {type(conn).__name__}"
    )
