"""What the three clients share above `ClientCore`: their construction, and every method
that only checks its arguments and runs one operation, written once.

A method such as ``spawn`` is an `operation`: its body builds a `Call` (the operation and
the caller's connection, if any), and the client it is read from runs that call with its
own executor. On the blocking client the method returns the value; on the trio and
asyncio clients it returns a coroutine of that value (the descriptor's `__get__` says so
to type checkers). The signature and documentation of each method stand here only.
"""

from __future__ import annotations

import functools
import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeAlias, TypeVar, overload
from uuid import UUID

import attrs
import psycopg
from psycopg_pool import PoolClosed, PoolTimeout

from ._clientcore import SAFETY_POLL, ClientCore, SpawnResult, TaskInfo, TaskRef, Waiting
from ._core.durations import Duration, to_seconds
from ._core.options import SpawnOptions
from ._core.states import TaskState
from ._db import CLIENT_CLOSED, CONNECTION_ERRORS, quiet, redact_url
from ._ends import AsyncEnds
from ._errors import ConfigurationError, DatabaseUnavailable, InvalidInput
from ._hooks import Hooks
from ._inspect import QueueStats, RetryResult, StepInfo, TaskPage
from ._sql import Op
from ._task import Task, TaskDefinition

__all__ = [
    "Async",
    "AsyncShell",
    "Blocking",
    "Call",
    "Connects",
    "Opening",
    "Pooled",
    "Shell",
    "TaskOf",
    "Timeout",
    "caller_connection",
    "operation",
    "pool_errors",
    "pool_options",
    "resolve_url",
]

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")
C = TypeVar("C")
Opened = TypeVar("Opened")  # what a client's `connect` returns

URL_ENV = "DURABLE_DATABASE_URL"
# The blocking client's wait_result overloads, spelled short.
TaskOf: TypeAlias = TaskDefinition[Any, R] | type[Task[Any, R]]
Timeout: TypeAlias = float | timedelta | None


def resolve_url(url: str | None) -> str:
    """The database URL a client connects to: `url`, else ``$DURABLE_DATABASE_URL``."""
    resolved = url or os.environ.get(URL_ENV)
    if not resolved:
        raise ConfigurationError(
            f"no database URL: pass url=... or set {URL_ENV} "
            "(e.g. postgresql://user:password@localhost:5432/dbname)"
        )
    return resolved


def caller_connection(conn: object, kind: type[T]) -> T:
    """The `connection=` of a spawn or emit, whose open transaction the write joins,
    checked to be of the `kind` the client drives."""
    if isinstance(conn, kind):
        return conn
    name = f"{kind.__module__.partition('.')[0]}.{kind.__name__}"
    raise InvalidInput(
        f"connection must be a {name} (to join its open transaction), got {type(conn).__name__}"
    )


@attrs.frozen
class Call(Generic[T]):
    """One operation to run, on the caller's `connection` (in its open transaction) or,
    when None, on a connection of the client's pool."""

    op: Op[T]
    connection: Any = None


@attrs.frozen
class Opening:
    """`connect`'s arguments, the URL resolved: what a client's `_open` works from."""

    url: str
    queue: str
    schema: str
    migrate: bool
    pool_size: int
    hooks: Hooks | None
    timeout: float


class Connects(Generic[Opened]):
    """`connect`, written once: each client opens itself in its own way (`_open`) and
    returns what its callers use (`Opened`): the blocking client itself, an async context
    manager for the trio and asyncio ones."""

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
    ) -> Opened:
        """Open a client: ``async with Durable.connect(...) as client`` (trio, asyncio),
        ``client = Durable.connect(...)`` (blocking; close it with `close()` or use it as
        a context manager). `url` defaults to ``$DURABLE_DATABASE_URL``.

        With ``migrate=True`` (the default) the schema is created or upgraded first (a
        schema already current is only read, so a role that may not change it can keep
        the default); with False it is checked, and one missing or older than this
        library raises `ConfigurationError` saying to migrate. Raises
        `DatabaseUnavailable` (password redacted) if the database cannot be reached within
        `timeout` seconds (more than zero), `InvalidInput` for a bad queue or schema name,
        pool size or timeout.
        """
        seconds = to_seconds(timeout, what="timeout", allow_zero=False)
        opening = Opening(resolve_url(url), queue, schema, migrate, pool_size, hooks, seconds)
        return cls._open(opening)

    @classmethod
    def _open(cls, opening: Opening) -> Opened:
        raise NotImplementedError


class Blocking(ABC):
    """A client whose methods block: it runs a `Call` and returns its value."""

    @abstractmethod
    def _execute(self, call: Call[T]) -> T: ...


class Async(ABC):
    """A client whose methods are coroutines (trio or asyncio)."""

    @abstractmethod
    async def _execute(self, call: Call[T]) -> T: ...


class operation(Generic[P, T]):  # noqa: N801 - used as a decorator, like property
    """A client method written once: `build` checks the arguments and returns the `Call`;
    the client the method is read from runs it (see the module docstring)."""

    def __init__(self, build: Callable[Concatenate[Any, P], Call[T]]) -> None:
        self.build = build
        self._attribute: str | None = None  # the class attribute it is (__set_name__)
        self.__doc__ = build.__doc__
        self.__name__ = build.__name__
        signature = inspect.signature(build).replace(return_annotation=inspect.Signature.empty)
        self.__signature__ = signature
        # What help() and inspect show for the method read from a client: no self.
        self._bound = signature.replace(parameters=list(signature.parameters.values())[1:])

    def __set_name__(self, owner: Any, name: str) -> None:
        self._attribute = name

    def __call__(self, client: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Called on the class, as ``Durable.get_task(client, task_id)``, like a method."""
        return self.__get__(client, type(client))(*args, **kwargs)

    @overload
    def __get__(self, obj: None, owner: Any) -> Self: ...

    @overload
    def __get__(self, obj: Blocking, owner: Any) -> Callable[P, T]: ...

    @overload
    def __get__(self, obj: Async, owner: Any) -> Callable[P, Coroutine[Any, Any, T]]: ...

    def __get__(self, obj: Any, owner: Any) -> Any:
        if obj is None:
            return self
        build = self.build
        if isinstance(obj, Blocking):

            def method(*args: Any, **kwargs: Any) -> Any:
                return obj._execute(build(obj, *args, **kwargs))

            return self._kept(obj, method)

        async def coroutine(*args: Any, **kwargs: Any) -> Any:
            return await obj._execute(build(obj, *args, **kwargs))

        return self._kept(obj, coroutine)

    def _kept(self, obj: Any, method: Callable[..., Any]) -> Callable[..., Any]:
        """`method` dressed as the client's own, and kept on the client: a descriptor
        without __set__ gives way to the instance's attribute, so later reads (a spawn
        per request) find it there instead of dressing a new one each time."""
        dressed = self._dressed(method)
        if self._attribute is not None:
            with suppress(AttributeError):  # a client with no __dict__
                obj.__dict__[self._attribute] = dressed
        return dressed

    def _dressed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        functools.update_wrapper(method, self.build)
        del method.__wrapped__  # type: ignore[attr-defined]  # its signature has self
        method.__signature__ = self._bound  # type: ignore[attr-defined]
        return method


class Shell(Generic[C]):
    """The methods every client has; `C` is the type of connection whose open transaction
    a spawn or an emit may join."""

    def __init__(
        self, url: str, *, queue: str, schema: str, pool_size: int, hooks: Hooks | None = None
    ) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise InvalidInput(f"pool_size must be a positive integer, got {pool_size!r}")
        self.url = url
        self._core = ClientCore(queue=queue, schema=schema, hooks=hooks)
        self.queue = self._core.queue
        self.schema = self._core.schema
        self._safety_poll = SAFETY_POLL  # see `SAFETY_POLL`; tests stretch it
        self._setup(pool_size)

    @classmethod
    def _made(cls, opening: Opening) -> Self:
        """The client `connect` opens (its pool and listener not connected yet)."""
        try:
            return cls(
                opening.url,
                queue=opening.queue,
                schema=opening.schema,
                pool_size=opening.pool_size,
                hooks=opening.hooks,
            )
        except ValueError as ex:
            raise InvalidInput(str(ex)) from None

    def _setup(self, pool_size: int) -> None:
        """Make the client's pool and end listener (not connected yet)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        where = f"{redact_url(self.url)} schema={self.schema} queue={self.queue}"
        return f"<{self._label} {where}>"

    _label = "Durable"  # how repr() names the client

    def _read_task(self, waiting: Waiting) -> Call[TaskInfo]:
        """What `wait_result` reads each time it looks: the task's own row."""
        return Call(self._core.op(self._core.task_row(waiting.task_id)))

    def register(self, *tasks: TaskRef) -> None:
        """Make tasks known to this client: `spawn_by_name` checks their params,
        `wait_result` types their results by name, and the trio client's workers run
        them. A name already registered for another function, or an object that is not a
        task, raises `ConfigurationError`; an invalid name `InvalidInput`, as for
        `spawn_by_name`."""
        self._core.register(*tasks)

    # -- spawning ---------------------------------------------------------------------

    @operation
    def spawn(
        self,
        task: TaskDefinition[Any, R] | type[Task[Any, R]],
        params: Any,
        *,
        options: SpawnOptions | None = None,
        connection: C | None = None,
    ) -> Call[SpawnResult[R]]:
        """Spawn `task` with `params` (an instance of its Params type).

        Invalid params or options raise `InvalidInput` / `SerializationError` and write
        nothing. With `connection` (on the trio client a connection from
        `Durable.connection()` or a plain blocking `psycopg.Connection`; a
        ``psycopg.Connection`` on the blocking client, a ``psycopg.AsyncConnection`` on
        the asyncio one), the spawn joins that connection's open transaction: it becomes
        visible when the caller commits, and vanishes on rollback.
        """
        return Call(self._core.op(self._core.spawn(task, params, options)), connection)

    @operation
    def spawn_by_name(
        self,
        name: str,
        params: Any,
        *,
        options: SpawnOptions | None = None,
        connection: C | None = None,
    ) -> Call[SpawnResult[Any]]:
        """Spawn a task by name with plain-JSON params.

        The name need not be registered here: a worker elsewhere may hold the code. A
        worker without the code leaves the task for one that has it.
        """
        return Call(self._core.op(self._core.spawn_by_name(name, params, options)), connection)

    @operation
    def spawn_many(
        self,
        task: TaskRef | str,
        params: Iterable[Any],
        *,
        options: SpawnOptions | None = None,
        idempotency_keys: Iterable[str | None] | None = None,
    ) -> Call[list[SpawnResult[Any]]]:
        """Spawn many tasks of one kind with shared options in one statement (all or none).

        The options are shared, so they cannot carry an idempotency key; give each task its
        own with `idempotency_keys` (one per params value, None for a task without one). A
        key that already names a task on the queue returns that task (``created`` False)
        and writes nothing for it, as `spawn` does. Tasks of one call sharing a key: the
        first of them is spawned, the later ones return it (``created`` False).
        """
        op = self._core.spawn_many(task, params, options, idempotency_keys)
        return Call(self._core.op(op))

    # -- reading ----------------------------------------------------------------------

    @operation
    def get_task(self, task_id: UUID) -> Call[TaskInfo]:
        """The current state of a task with its attempts (each with its error), what it
        is waiting for, its children and headers, read in one snapshot; `TaskNotFound`
        if there is none."""
        return Call(self._core.read(self._core.get_task(task_id)))

    @operation
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
    ) -> Call[TaskPage]:
        """One page of tasks, oldest first, matching every filter given.

        `queue` None means every queue (not only this client's). `state` is a `TaskState`
        or its value. ``created_after <= created_at < created_before`` (aware
        datetimes, the database's clock). `parent` lists a task's children. `limit` is
        1 to 1000. Pages are in task_id order (UUIDv7: creation order to the millisecond,
        then random within one); pass the page's ``next_after`` as `after` for the next
        one, until it is None. The cursor is a plain task id, so a page may also start
        after any task you hold; tasks created while you page appear on later pages.
        Bad input raises `InvalidInput`.
        """
        filters = (queue, state, name, created_after, created_before, parent)
        op = self._core.list_tasks(filters, limit, after)
        return Call(self._core.read(op))

    @operation
    def steps(self, task_id: UUID) -> Call[list[StepInfo]]:
        """Every checkpoint of a task in the order written (those a worker wrote in one
        transaction, by name): steps, and the library's own
        (spawns, joins, sleeps, events, emits, ctx.now/random/uuid7), with their stored
        JSON values and the attempt that wrote each. `TaskNotFound` if no such task."""
        return Call(self._core.read(self._core.steps(task_id)))

    @operation
    def queue_stats(
        self,
        queue: str | None = None,
        *,
        window: Duration = timedelta(hours=1),
        unserved_after: Duration = timedelta(minutes=5),
    ) -> Call[QueueStats]:
        """Counts for monitoring one queue (every queue when `queue` is None): live
        tasks by state, runs due now and the age of the oldest of them, failures and
        cancellations in the last `window`, runs due for longer than `unserved_after`
        whose task name no live worker has registered, in total and per task name. Reads
        only live runs, the runs that ended badly in `window` (partial indexes) and the
        workers registry, never the finished tasks, so it stays cheap to poll."""
        span = timedelta(seconds=to_seconds(window, what="window"))
        after = timedelta(seconds=to_seconds(unserved_after, what="unserved_after"))
        return Call(self._core.read(self._core.queue_stats(queue, span, after)))

    # -- steering ---------------------------------------------------------------------

    @operation
    def retry(
        self, task_id: UUID, *, max_attempts: int | None = None, from_scratch: bool = False
    ) -> Call[RetryResult]:
        """Give a failed or cancelled task a new attempt, now.

        It keeps its checkpoints, so the new attempt resumes after the last step that
        finished (deploy the fix, then retry); with ``from_scratch=True`` they are deleted
        and it starts over. `max_attempts` is the new total limit of attempts (more than
        the attempts made so far); by default the task keeps its limit, raised to allow
        this one attempt if it was used up. Its max_duration counts from the new start.

        Without `from_scratch`, the descendants that were cancelled because this task
        ended get a new attempt too (keeping their checkpoints), so a replayed
        ``ctx.spawn`` finds the same child running again and ``ctx.join`` waits for its
        new outcome. A retried child's earlier outcome is forgotten: a parent that has
        not joined it yet waits for the new one; a parent that already joined keeps what
        it saw. A child whose parent failed or was cancelled is refused (its claim would
        cancel it again): retry the parent. `RetryRefused` (nothing written) for a task
        that has not failed or been cancelled, `TaskNotFound` if there is none.
        """
        return Call(self._core.op(self._core.retry(task_id, max_attempts, from_scratch)))

    @operation
    def emit_event(
        self,
        name: str,
        payload: Any = None,
        *,
        queue: str | None = None,
        connection: C | None = None,
    ) -> Call[int]:
        """Emit an event on the client's queue (or `queue`); return how many waiting
        tasks it woke. Events are sticky: later waits receive it at once. A second emit of
        the same name replaces the payload for waits that have not received one yet.
        With `connection`, the emit joins the caller's open transaction."""
        return Call(self._core.op(self._core.emit(name, payload, queue)), connection)

    @operation
    def cancel(self, task_id: UUID, reason: str = "cancelled by client") -> Call[bool]:
        """Cancel a task and all its unfinished descendants. Pending and sleeping tasks stop
        at once; a running attempt is cancelled through its trio cancel scope within one
        heartbeat (at once when the worker receives the notification). Returns False if
        the task had already ended."""
        return Call(self._core.op(self._core.cancel(task_id, reason)))


class AsyncShell(Shell[C], Async):
    """The trio and asyncio clients: `wait_result` as a coroutine."""

    @overload
    async def wait_result(self, task: SpawnResult[R], /, *, timeout: Timeout = None) -> R: ...

    @overload
    async def wait_result(
        self,
        task: TaskDefinition[Any, R] | type[Task[Any, R]],
        task_id: UUID | str,
        *,
        timeout: Timeout = None,
    ) -> R: ...

    @overload
    async def wait_result(
        self, task: str | None, task_id: UUID | str, *, timeout: Timeout = None
    ) -> Any: ...

    async def wait_result(
        self,
        task: TaskDefinition[Any, Any] | type[Task[Any, Any]] | SpawnResult[Any] | str | None,
        task_id: UUID | str | None = None,
        *,
        timeout: Timeout = None,
    ) -> Any:
        """Wait until the task ends; return its result typed as the task's Output:
        ``wait_result(spawned)`` with what a spawn returned, or ``wait_result(task,
        task_id)``.

        Raises `TaskFailed`, `TaskCancelled`, or `WaitTimeout` after `timeout` seconds
        (the task itself goes on). `task` may be a registered name (`UnknownTask`
        otherwise), or None for the stored plain JSON; `InvalidInput` if the task with
        this id is another task. The client learns of the end from the database's
        notification; it also reads the task every few seconds, should one be missed.
        """
        waiting = self._core.waiting(task, task_id, timeout)
        async with self._ends.watch(waiting) as watcher:
            while not (found := waiting.outcome(await self._execute(self._read_task(waiting))))[0]:
                await self._ends.wait(watcher, self._safety_poll)
        return found[1]

    _ends: AsyncEnds


# -- the psycopg_pool clients (blocking and asyncio) ----------------------------------------


def pool_options(pool_size: int, *, asynchronous: bool) -> dict[str, Any]:
    """How the blocking and asyncio clients make their psycopg_pool pools: each pooled
    connection checked before it is handed out, without a round trip (`_db.quiet`), so
    one the server dropped while it was idle is replaced instead of failing the call."""
    check = _check_quietly if asynchronous else _check_quiet
    return {
        "min_size": 1,
        "max_size": pool_size,
        "kwargs": {"autocommit": True},
        "open": False,
        "check": check,
    }


# A check that fails must leave the connection closed: the pool takes back one that
# still looks OK to libpq and would hand it out again.
_GONE = "the server closed this idle connection"


def _check_quiet(conn: psycopg.Connection[Any]) -> None:
    if not conn.closed and not quiet(conn.pgconn):
        conn.close()
    if conn.closed:
        raise psycopg.OperationalError(_GONE)


async def _check_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
    if not conn.closed and not quiet(conn.pgconn):
        await conn.close()
    if conn.closed:
        raise psycopg.OperationalError(_GONE)


class Pooled:
    """The pooled connection a call of the blocking or asyncio client runs on, once it
    has one (see `pool_errors`)."""

    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None


@contextmanager
def pool_errors(url: str) -> Iterator[Pooled]:
    """A pool that cannot hand out a connection, or is closed (its client was closed),
    or a pooled connection that broke, is `DatabaseUnavailable`; other database errors
    pass through."""
    pooled = Pooled()
    try:
        yield pooled
    except PoolTimeout as ex:
        raise DatabaseUnavailable(f"no connection to {redact_url(url)}: {ex}") from ex
    except PoolClosed:
        raise DatabaseUnavailable(CLIENT_CLOSED) from None
    except CONNECTION_ERRORS as ex:
        if pooled.conn is None or not pooled.conn.broken:
            raise
        raise DatabaseUnavailable(f"lost the database connection: {ex}") from ex
