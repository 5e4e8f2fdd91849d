"""The client: spawn tasks, read their state, emit events, cancel, and run workers."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar
from uuid import UUID

import attrs
import psycopg
import trio

from . import _serde
from ._core.durations import to_seconds
from ._core.ids import uuid7
from ._core.names import validate_name, validate_queue, validate_schema
from ._core.options import SpawnOptions, WorkerOptions
from ._core.states import TaskState
from ._db import CONNECTION_LOST, Pool, TrioConnection, connect, redact_url
from ._errors import (
    ConfigurationError,
    InvalidInput,
    SerializationError,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    UnknownTask,
    WaitTimeout,
    WorkerFailed,
)
from ._retention import CleanupResult, check_batch, cutoff
from ._store import Store, interval
from ._task import Task, TaskDefinition, as_definition
from ._worker import Worker

__all__ = ["Durable", "SpawnResult", "TaskInfo"]

R = TypeVar("R")
URL_ENV = "DURABLE_DATABASE_URL"
_DEFAULT_OPTIONS = SpawnOptions()


@attrs.frozen
class SpawnResult:
    """What a spawn returns. ``created`` is False when an idempotency key matched an
    existing task (whose ids are returned and nothing was written)."""

    task_id: UUID
    run_id: UUID
    attempt: int
    created: bool = True


@attrs.frozen
class TaskInfo:
    """A snapshot of one task. ``result`` and ``error`` are stored JSON; use
    `Durable.wait_result` for a typed result. ``error`` is the latest failed attempt's
    error: a task that succeeded on a retry keeps it (with ``state`` COMPLETED)."""

    task_id: UUID
    queue: str
    task_name: str
    state: TaskState
    attempts: int
    max_attempts: int
    priority: int
    params: Any
    headers: dict[str, Any]
    result: Any
    error: dict[str, Any] | None
    cancel_reason: str | None
    parent_task_id: UUID | None
    root_task_id: UUID
    last_run_id: UUID
    created_at: datetime
    first_started_at: datetime | None
    finished_at: datetime | None

    @property
    def terminal(self) -> bool:
        return self.state.terminal


class Durable:
    """A handle on one durable_trio schema and queue. Create it with `Durable.connect`."""

    def __init__(self, url: str, *, queue: str, schema: str, pool_size: int) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise InvalidInput(f"pool_size must be a positive integer, got {pool_size!r}")
        self.url = url
        self.queue = validate_queue(queue)
        self.schema = validate_schema(schema)
        self._pool = Pool(url, max_size=pool_size)
        self._store = Store(self._pool, self.schema)
        self._registry: dict[str, TaskDefinition[Any, Any]] = {}

    def __repr__(self) -> str:
        return f"<Durable {redact_url(self.url)} schema={self.schema} queue={self.queue}>"

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
    ) -> AsyncIterator[Durable]:
        """Open a client. `url` defaults to ``$DURABLE_DATABASE_URL``.

        With ``migrate=True`` (the default) the schema is created or upgraded first;
        pass False when running under a role that may not change the schema.
        Raises `DatabaseUnavailable` (password redacted) if the database is unreachable.
        """
        resolved = url or os.environ.get(URL_ENV)
        if not resolved:
            raise ConfigurationError(
                f"no database URL: pass url=... or set {URL_ENV} "
                "(e.g. postgresql://user:password@localhost:5432/dbname)"
            )
        try:
            client = cls(resolved, queue=queue, schema=schema, pool_size=pool_size)
        except ValueError as ex:
            raise InvalidInput(str(ex)) from None
        try:
            async with client._pool.acquire():
                pass  # fail fast, with a clear error, if the database is unreachable
            if migrate:
                await client.migrate()
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await client._pool.aclose()

    # -- registry ---------------------------------------------------------------------

    def register(self, *tasks: TaskDefinition[Any, Any] | type[Task[Any, Any]]) -> None:
        """Make tasks runnable by this client's workers. Names must be unique."""
        for obj in tasks:
            definition = as_definition(obj)
            existing = self._registry.get(definition.name)
            if existing is not None and existing.fn is not definition.fn:
                raise ConfigurationError(f"a task named {definition.name!r} is already registered")
            self._registry[definition.name] = definition

    def definition(self, name: str) -> TaskDefinition[Any, Any]:
        try:
            return self._registry[name]
        except KeyError:
            raise UnknownTask(f"no task named {name!r} is registered on this client") from None

    @property
    def registered(self) -> list[str]:
        return sorted(self._registry)

    # -- schema -----------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Create or upgrade the schema (idempotent; concurrent callers are serialised)."""
        return await self._store.migrate()

    # -- spawning ---------------------------------------------------------------------

    def _prepare_spawn(
        self,
        task: TaskDefinition[Any, Any] | type[Task[Any, Any]] | str,
        params: Any,
        options: SpawnOptions | None,
        *,
        parent: UUID | None = None,
        queue: str | None = None,
    ) -> dict[str, Any]:
        """Validate and serialise one spawn into the row the store inserts. `queue` is
        the default when the options name none (a child goes to its parent's queue)."""
        return self._prepare_spawns(task, [params], options, parent=parent, queue=queue)[0]

    def _prepare_spawns(
        self,
        task: TaskDefinition[Any, Any] | type[Task[Any, Any]] | str,
        params: Iterable[Any],
        options: SpawnOptions | None,
        *,
        parent: UUID | None = None,
        queue: str | None = None,
    ) -> list[dict[str, Any]]:
        """Validate and serialise spawns of one task with shared options (options are
        serialised once, each params value on its own)."""
        if isinstance(task, str):
            name = _checked(validate_name, task, what="task name")
            known = self._registry.get(name)
            defaults = known.options if known is not None else None
        else:
            known = as_definition(task)
            name = known.name
            defaults = known.options
        opts = options if options is not None else (defaults or _DEFAULT_OPTIONS)
        if not isinstance(opts, SpawnOptions):
            raise InvalidInput(f"options must be a SpawnOptions, got {opts!r}")
        policy = opts.cancellation
        with _about("headers"):
            headers_json = _serde.dumps(_serde.unstructure(opts.headers))
        common = {
            "queue": opts.queue or queue or self.queue,
            "task_name": name,
            "headers": headers_json,
            "retry": _serde.dumps(opts.retry.to_json()),
            "max_attempts": opts.max_attempts,
            "priority": opts.priority,
            "delay": interval(opts.delay),
            "start_at": opts.start_at,
            "idempotency_key": opts.idempotency_key,
            "max_pending_delay": interval(policy.max_pending_delay if policy else None),
            "max_duration": interval(policy.max_duration if policy else None),
            "parent": parent,
        }
        return [
            {
                "task_id": uuid7(),
                "run_id": uuid7(),
                "params": _params_json(name, value, known, typed=not isinstance(task, str)),
                **common,
            }
            for value in params
        ]

    async def spawn(
        self,
        task: TaskDefinition[Any, Any] | type[Task[Any, Any]],
        params: Any,
        *,
        options: SpawnOptions | None = None,
        connection: TrioConnection | psycopg.Connection[Any] | None = None,
    ) -> SpawnResult:
        """Spawn `task` with `params` (an instance of its Params type).

        Invalid params or options raise `InvalidInput` / `SerializationError` and write
        nothing. With `connection` (a connection from `Durable.connection()` or a plain
        blocking `psycopg.Connection`), the spawn joins that connection's open
        transaction: it becomes visible when the caller commits, and vanishes on rollback.
        """
        if isinstance(task, str):
            raise InvalidInput("spawn() takes a task definition; use spawn_by_name() for names")
        row = self._prepare_spawn(task, params, options)
        return _result(await self._store.spawn(row, _caller_connection(connection)))

    async def spawn_by_name(
        self,
        name: str,
        params: Any,
        *,
        options: SpawnOptions | None = None,
        connection: TrioConnection | psycopg.Connection[Any] | None = None,
    ) -> SpawnResult:
        """Spawn a task by name with plain-JSON params.

        The name need not be registered here: a worker elsewhere may hold the code. A
        worker without the code leaves the task for one that has it.
        """
        row = self._prepare_spawn(name, params, options)
        return _result(await self._store.spawn(row, _caller_connection(connection)))

    async def spawn_many(
        self,
        task: TaskDefinition[Any, Any] | type[Task[Any, Any]] | str,
        params: Iterable[Any],
        *,
        options: SpawnOptions | None = None,
    ) -> list[SpawnResult]:
        """Spawn many tasks of one kind with shared options in one statement (all or none).
        The options are shared, so they cannot carry an idempotency key (one key would make
        every task after the first a duplicate of it)."""
        rows = self._prepare_spawns(task, params, options)
        if not rows:
            return []
        if rows[0]["idempotency_key"] is not None:  # given, or the task's default
            raise InvalidInput(
                "spawn_many shares its options between every task, so an idempotency_key "
                "would make all but the first a duplicate: spawn them one by one with a key "
                "each, or drop the key"
            )
        return [_result(row) for row in await self._store.spawn_many(rows)]

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[TrioConnection]:
        """A dedicated trio-native psycopg connection (autocommit off) to the same
        database, for doing your own writes and `spawn(..., connection=conn)` /
        `emit_event(..., connection=conn)` in one transaction. Commit or roll back
        yourself; leaving the block without committing rolls back."""
        conn = await connect(self.url, autocommit=False)
        try:
            yield conn
        finally:
            with trio.CancelScope(shield=True):
                try:
                    if not conn.closed:
                        await conn.rollback()
                finally:
                    await conn.close()

    # -- reading ----------------------------------------------------------------------

    async def get_task(self, task_id: UUID) -> TaskInfo:
        """The current state of a task; `TaskNotFound` if there is none."""
        row = await self._store.get_task(_uuid(task_id))
        if row is None:
            raise TaskNotFound(task_id)
        return TaskInfo(**{**row, "state": TaskState(row["state"])})

    async def wait_result(
        self,
        task: TaskDefinition[Any, R] | type[Task[Any, R]] | str | None,
        task_id: UUID,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Wait until the task ends; return its result typed as the task's Output.

        Raises `TaskFailed`, `TaskCancelled`, or `WaitTimeout` after `timeout` seconds
        (the task itself goes on). `task` may be a registered name (`UnknownTask`
        otherwise), or None for the stored plain JSON; `InvalidInput` if the task with
        this id is another task.
        """
        output_type = _output_type(task, self._registry)
        expected = (
            None if task is None else task if isinstance(task, str) else as_definition(task).name
        )
        task_id = _uuid(task_id)
        limit = math.inf if timeout is None else to_seconds(timeout, what="timeout")
        delay = 0.002
        with trio.move_on_after(limit):
            while True:
                info = await self.get_task(task_id)
                if expected is not None and info.task_name != expected:
                    raise InvalidInput(
                        f"task {task_id} is a {info.task_name!r} task, not {expected!r}: "
                        "pass its own task (or None for its plain JSON result)"
                    )
                if info.state is TaskState.COMPLETED:
                    return _serde.structure(info.result, output_type)
                if info.state is TaskState.FAILED:
                    raise TaskFailed(task_id, info.error)
                if info.state is TaskState.CANCELLED:
                    raise TaskCancelled(task_id, info.cancel_reason)
                await trio.sleep(delay)
                delay = min(delay * 1.5, 0.1)
        raise WaitTimeout(f"task {task_id} did not finish within {limit:g} seconds")

    # -- events and cancellation ------------------------------------------------------

    async def emit_event(
        self,
        name: str,
        payload: Any = None,
        *,
        queue: str | None = None,
        connection: TrioConnection | psycopg.Connection[Any] | None = None,
    ) -> int:
        """Emit an event on the client's queue (or `queue`); return how many waiting
        tasks it woke. Events are sticky: later waits receive it at once. A second emit of
        the same name replaces the payload for waits that have not received one yet.
        With `connection`, the emit joins the caller's open transaction."""
        event = _checked(validate_name, name, what="event name")
        target = _checked(validate_queue, self.queue if queue is None else queue)
        with _about("event payload"):
            text = _serde.dumps(_serde.unstructure(payload))
        return await self._store.emit_event(target, event, text, _caller_connection(connection))

    async def cancel(self, task_id: UUID, reason: str = "cancelled by client") -> bool:
        """Cancel a task and all its unfinished descendants. Pending and sleeping tasks stop
        at once; a running attempt is cancelled through its trio cancel scope within one
        heartbeat (at once when the worker receives the notification). Returns False if
        the task had already ended."""
        task_id = _uuid(task_id)
        if not isinstance(reason, str) or "\x00" in reason:
            raise InvalidInput(
                f"cancel reason must be text without NUL characters, got {reason!r:.80}"
            )
        if await self._store.get_task(task_id) is None:
            raise TaskNotFound(task_id)
        return await self._store.cancel(task_id, reason) > 0

    async def cleanup(
        self,
        *,
        finished_before: datetime | timedelta | float | None = None,
        events_before: datetime | timedelta | float | None = None,
        batch: int = 1000,
    ) -> CleanupResult:
        """Remove old finished work; return what was removed.

        ``finished_before``: tasks that finished before then (an aware datetime, or an age
        such as ``timedelta(days=30)`` on the database's clock) go, with their runs,
        checkpoints and waits, unless their parent is still unfinished. ``events_before``:
        events emitted before then go (a task that waits for one later no longer finds
        it). Children's internal end events go once their parent has finished. Works in
        transactions of at most `batch` rows of each kind, taking no lock a claim or a
        worker's write waits on; a removed task's idempotency key may be used again.
        """
        batch = check_batch(batch)
        now = await self._store.now()
        tasks_cut = cutoff(finished_before, what="finished_before", now=now)
        events_cut = cutoff(events_before, what="events_before", now=now)
        total = CleanupResult()
        while True:
            removed = CleanupResult(**await self._store.cleanup(tasks_cut, events_cut, batch))
            total += removed
            if not removed.full(batch):
                return total

    # -- workers ----------------------------------------------------------------------

    def new_worker(self, options: WorkerOptions | None = None) -> Worker:
        """A worker for this client's registered tasks; run it with
        ``await nursery.start(worker.run)`` and stop it with ``worker.shutdown()``."""
        return Worker(
            url=self.url,
            schema=self.schema,
            queues=[self.queue],
            registry=dict(self._registry),
            prepare_spawn=self._prepare_spawn,
            options=options or WorkerOptions(),
        )

    @asynccontextmanager
    async def worker(self, options: WorkerOptions | None = None) -> AsyncIterator[Worker]:
        """Run a worker for the duration of the block.

        Leaving the block normally shuts the worker down gracefully. An exception raised
        in the block stops the worker at once (its runs are retried once their leases
        expire) and is re-raised as it is, never wrapped in an ExceptionGroup, so a plain
        ``except dt.WaitTimeout:`` around the block works. If the worker itself fails (a
        bug, or a database error it cannot ride out), the block is cancelled and
        `WorkerFailed` is raised, with the worker's error as its ``__cause__``.
        """
        worker = self.new_worker(options)
        # Checked here too, so a missing schema is reported as it is, before any nursery.
        with suppress(*CONNECTION_LOST):
            await self._store.check_schema()
        raised: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                try:
                    yield worker
                except BaseException as ex:
                    raised = ex
                    raise
                finally:
                    worker.shutdown()
        except BaseExceptionGroup as group:
            _unwrap(group, raised, worker)

    @property
    def store(self) -> Store:
        """The low-level store (used by durable_trio.testing)."""
        return self._store


def _unwrap(
    group: BaseExceptionGroup[BaseException], raised: BaseException | None, worker: Worker
) -> NoReturn:
    """Raise what left `client.worker()`'s nursery as the user would expect it: the
    worker's own failure as `WorkerFailed`, else the block's exception, bare."""
    # Not by identity: trio's cancel scopes copy the groups they split (the leaves stay).
    mine = {id(leaf) for leaf in _leaves(raised)} if raised is not None else set()
    others = [ex for ex in group.exceptions if any(id(e) not in mine for e in _leaves(ex))]
    # The worker's trio.Cancelled only says the block's error or an outer scope stopped it.
    failures = [rest for ex in others if (rest := _without_cancelled(ex)) is not None]
    if failures:
        cause = _innermost(failures[0] if len(failures) == 1 else group.derive(failures))
        if not isinstance(cause, Exception):
            _reraise(cause)  # KeyboardInterrupt, SystemExit: passed on as they are
        raise WorkerFailed(
            f"worker {worker.worker_id} stopped with an error: {type(cause).__name__}: {cause}"
        ) from cause
    if raised is None:
        raise group  # only cancellations: the scope that cancelled catches them
    _reraise(raised)


def _leaves(ex: BaseException) -> Iterator[BaseException]:
    if isinstance(ex, BaseExceptionGroup):
        for inner in ex.exceptions:
            yield from _leaves(inner)
    else:
        yield ex


def _innermost(ex: BaseException) -> BaseException:
    """A group of one exception, nested however deep, is that exception."""
    while isinstance(ex, BaseExceptionGroup) and len(ex.exceptions) == 1:
        ex = ex.exceptions[0]
    return ex


def _without_cancelled(ex: BaseException) -> BaseException | None:
    if isinstance(ex, BaseExceptionGroup):
        return ex.split(trio.Cancelled)[1]
    return None if isinstance(ex, trio.Cancelled) else ex


def _reraise(ex: BaseException) -> NoReturn:
    """Raise `ex` again keeping its own ``__context__`` (raising it while the group is
    handled would chain the group, which holds `ex` itself, as its context)."""
    context = ex.__context__
    try:
        raise ex
    finally:
        ex.__context__ = context


def _result(row: dict[str, Any]) -> SpawnResult:
    return SpawnResult(row["task_id"], row["run_id"], row["attempt"], row.get("created", True))


def _caller_connection(conn: Any) -> Any:
    """The `connection=` of a spawn or emit, checked before anything is written with it.
    An asyncio psycopg connection cannot be driven by trio: refused too."""
    if conn is None or isinstance(conn, (TrioConnection, psycopg.Connection)):
        return conn
    raise InvalidInput(
        "connection must be a connection from Durable.connection() or a psycopg.Connection "
        f"(to join its open transaction), got {type(conn).__name__}"
    )


def _uuid(value: Any) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise InvalidInput(f"task_id must be a UUID, got {value!r}") from None


def _checked(validate: Any, value: Any, **kwargs: Any) -> str:
    try:
        result: str = validate(value, **kwargs)
    except ValueError as ex:
        raise InvalidInput(str(ex)) from None
    return result


def _output_type(task: Any, registry: dict[str, TaskDefinition[Any, Any]]) -> Any:
    if task is None:
        return Any
    if isinstance(task, str):
        if task not in registry:
            raise UnknownTask(
                f"no task named {task!r} is registered on this client, so its result type "
                "is unknown: register it, or pass None to get the plain JSON result"
            )
        return registry[task].output_type
    return as_definition(task).output_type


def _params_json(
    name: str, params: Any, known: TaskDefinition[Any, Any] | None, *, typed: bool
) -> str:
    """Params as JSON. By definition: through its Params type. By name: plain JSON, which
    must still fit the Params type when the task is registered here."""
    with _about(f"params of task {name!r}"):
        if typed and known is not None:
            return _serde.roundtrip(params, known.params_type)[0]
        text = _serde.dumps(_serde.unstructure(params))
        if known is not None:
            _serde.structure(_serde.loads(text), known.params_type)
        return text


@contextmanager
def _about(what: str) -> Iterator[None]:
    """Say which argument a serialisation error is about."""
    try:
        yield
    except SerializationError as ex:
        raise SerializationError(f"{what}: {ex}") from None
