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

import time
from typing import Any, Self, TypeVar, overload
from uuid import UUID

import psycopg
from psycopg.conninfo import (
    conninfo_attempts,
    conninfo_to_dict,
    make_conninfo,
    timeout_from_conninfo,
)
from psycopg.waiting import wait_conn
from psycopg_pool import ConnectionPool

from . import _sql
from ._clientcore import SpawnResult
from ._db import CONNECT_ERRORS, too_late, unreachable
from ._ends import BlockingEnds
from ._shell import (
    Blocking,
    Call,
    Connects,
    Opening,
    Shell,
    TaskOf,
    Timeout,
    caller_connection,
    pool_errors,
    pool_options,
)

__all__ = ["Durable"]

R = TypeVar("R")
T = TypeVar("T")


class Durable(Shell[psycopg.Connection[Any]], Blocking, Connects["Durable"]):
    """A blocking handle on one durable_trio schema and queue; `Durable.connect` opens
    one. Safe to share between threads. Methods behave as those of the trio
    `durable_trio.Durable` of the same name."""

    _label = "durable_trio.sync.Durable"

    def _setup(self, pool_size: int) -> None:
        self._pool = ConnectionPool(self.url, **pool_options(pool_size, asynchronous=False))
        self._ends = BlockingEnds(self.url, self.schema)

    @classmethod
    def _open(cls, opening: Opening) -> Durable:
        client = cls._made(opening)
        try:
            # One connection first: a clear error, if the database is unreachable.
            _reachable(opening.url, opening.timeout)
            with pool_errors(opening.url):
                client._pool.open(wait=True, timeout=opening.timeout)
            if opening.migrate:
                client.migrate()
            else:  # refused now, not at the first statement that finds something missing
                client._execute(Call(_sql.check_schema(client.schema)))
        except BaseException:
            client.close()  # the pool's threads would go on trying to connect
            raise
        return client

    def close(self) -> None:
        self._ends.close()
        self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _execute(self, call: Call[T], *, transaction: bool = False) -> T:
        """Drive the call on the caller's connection (in its open transaction) or a
        pooled one; a connection that breaks or a pool that cannot connect is
        `DatabaseUnavailable`, other database errors pass through."""
        if call.connection is not None:
            return _sql.run_blocking(
                caller_connection(call.connection, psycopg.Connection), call.op
            )
        with pool_errors(self.url) as pooled, self._pool.connection() as conn:
            pooled.conn = conn
            if transaction:
                with conn.transaction():
                    return _sql.run_blocking(conn, call.op)
            return _sql.run_blocking(conn, call.op)

    def migrate(self) -> list[int]:
        """Create or upgrade the schema (idempotent; concurrent callers are serialised)."""
        return self._execute(Call(_sql.migrate(self.schema)), transaction=True)

    @overload
    def wait_result(self, task: SpawnResult[R], /, *, timeout: Timeout = None) -> R: ...

    @overload
    def wait_result(
        self, task: TaskOf[R], task_id: UUID | str, *, timeout: Timeout = None
    ) -> R: ...

    @overload
    def wait_result(
        self, task: str | None, task_id: UUID | str, *, timeout: Timeout = None
    ) -> Any: ...

    def wait_result(
        self,
        task: TaskOf[Any] | SpawnResult[Any] | str | None,
        task_id: UUID | str | None = None,
        *,
        timeout: Timeout = None,
    ) -> Any:
        """Block until the task ends (``wait_result(spawned)`` or ``wait_result(task,
        task_id)``); its typed result, or `TaskFailed` / `TaskCancelled`
        / `WaitTimeout` after `timeout` seconds (the task itself goes on)."""
        waiting = self._core.waiting(task, task_id, timeout)
        with self._ends.watch(waiting) as watcher:
            while not (found := waiting.outcome(self._execute(self._read_task(waiting))))[0]:
                self._ends.wait(watcher, self._safety_poll)
        return found[1]


def _reachable(url: str, timeout: float) -> None:
    """Open one connection and close it; `DatabaseUnavailable` (password redacted) if the
    database does not answer within `timeout` seconds."""
    try:
        _connect(url, time.monotonic() + timeout).close()
    except _Late:
        error = too_late(url, timeout)
    except CONNECT_ERRORS as ex:
        error = unreachable(url, ex)
    else:
        return
    raise error  # outside the handler: see `unreachable`


class _Late(Exception):
    """`_connect`'s deadline passed."""


def _connect(url: str, deadline: float) -> psycopg.Connection[Any]:
    """`psycopg.Connection.connect(url)` by the `deadline` (a `time.monotonic` time), or
    `_Late`: psycopg's own connect_timeout counts whole seconds, two at least, so
    psycopg's connection steps are driven here (its internals, as
    `_db.TrioConnection.connect` drives them under trio). The URL's connect_timeout still
    bounds each host tried."""
    params = conninfo_to_dict(url)
    per_host = timeout_from_conninfo(params)
    failure: psycopg.Error = psycopg.OperationalError("no host to connect to")
    for attempt in conninfo_attempts(params):
        if (left := deadline - time.monotonic()) <= 0:
            raise _Late
        steps = psycopg.Connection._connect_gen(make_conninfo("", **attempt))
        try:
            return wait_conn(steps, interval=0.1, timeout=min(left, per_host))
        except psycopg.errors._WaitTimeout:
            if left <= per_host:
                raise _Late from None
            failure = psycopg.errors.ConnectionTimeout("connection timeout expired")
        except psycopg.Error as ex:
            failure = ex
    raise failure
