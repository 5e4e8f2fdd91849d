"""The client: spawn tasks, read their state, emit events, cancel, and run workers."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, suppress
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar, overload
from uuid import UUID

import psycopg
import sniffio
import trio

from . import _schedules
from ._clientcore import ClientCore, SpawnResult, TaskInfo, poll_delays
from ._core.durations import Duration, to_seconds
from ._core.options import SpawnOptions, WorkerOptions
from ._core.schedules import MissedPolicy
from ._core.states import TaskState
from ._db import CONNECTION_LOST, Pool, TrioConnection, connect, redact_url
from ._errors import (
    ConfigurationError,
    InvalidInput,
    WaitTimeout,
    WorkerFailed,
)
from ._fleet import UnservedTasks, WorkerInfo
from ._hooks import Hooks
from ._inspect import (
    QueueStats,
    RetryResult,
    StepInfo,
    TaskPage,
)
from ._retention import CleanupResult, check_batch, check_duty, cutoff
from ._schedules import ScheduleInfo
from ._store import Connection, Store
from ._task import Task, TaskDefinition
from ._worker import Worker

__all__ = ["Durable", "SpawnResult", "TaskInfo"]

R = TypeVar("R")
URL_ENV = "DURABLE_DATABASE_URL"
_DEFAULT_OPTIONS = SpawnOptions()
MAX_CHILDREN_SHOWN = 100


class Durable:
    """A handle on one durable_trio schema and queue. Create it with `Durable.connect`."""

    def __init__(
        self, url: str, *, queue: str, schema: str, pool_size: int, hooks: Hooks | None = None
    ) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise InvalidInput(f"pool_size must be a positive integer, got {pool_size!r}")
        self.url = url
        self._core = ClientCore(queue=queue, schema=schema, hooks=hooks)
        self.queue = self._core.queue
        self.schema = self._core.schema
        self._registry = self._core.registry
        self._pool = Pool(url, max_size=pool_size)
        self._store = Store(self._pool, self.schema)

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
        hooks: Hooks | None = None,
    ) -> AsyncIterator[Durable]:
        """Open a client. `url` defaults to ``$DURABLE_DATABASE_URL``.

        With ``migrate=True`` (the default) the schema is created or upgraded first;
        pass False when running under a role that may not change the schema.
        Raises `DatabaseUnavailable` (password redacted) if the database is unreachable.
        """
        _require_trio()
        resolved = url or os.environ.get(URL_ENV)
        if not resolved:
            raise ConfigurationError(
                f"no database URL: pass url=... or set {URL_ENV} "
                "(e.g. postgresql://user:password@localhost:5432/dbname)"
            )
        try:
            client = cls(resolved, queue=queue, schema=schema, pool_size=pool_size, hooks=hooks)
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
        """Make tasks runnable by this client's workers. Names must be unique and valid
        (`InvalidInput` otherwise, as for `spawn_by_name`)."""
        self._core.register(*tasks)

    def definition(self, name: str) -> TaskDefinition[Any, Any]:
        return self._core.definition(name)

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
        inherited: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Validate and serialise one spawn into the row the store inserts (workers and
        task contexts spawn children through it)."""
        return self._core.spawn_row(
            task, params, options, parent=parent, queue=queue, inherited=inherited
        )

    async def spawn(
        self,
        task: TaskDefinition[Any, R] | type[Task[Any, R]],
        params: Any,
        *,
        options: SpawnOptions | None = None,
        connection: TrioConnection | psycopg.Connection[Any] | None = None,
    ) -> SpawnResult[R]:
        """Spawn `task` with `params` (an instance of its Params type).

        Invalid params or options raise `InvalidInput` / `SerializationError` and write
        nothing. With `connection` (a connection from `Durable.connection()` or a plain
        blocking `psycopg.Connection`), the spawn joins that connection's open
        transaction: it becomes visible when the caller commits, and vanishes on rollback.
        """
        op = self._core.spawn(task, params, options)
        return await self._store.run(self._core.op(op), _caller_connection(connection))

    async def spawn_by_name(
        self,
        name: str,
        params: Any,
        *,
        options: SpawnOptions | None = None,
        connection: TrioConnection | psycopg.Connection[Any] | None = None,
    ) -> SpawnResult[Any]:
        """Spawn a task by name with plain-JSON params.

        The name need not be registered here: a worker elsewhere may hold the code. A
        worker without the code leaves the task for one that has it.
        """
        op = self._core.spawn_by_name(name, params, options)
        return await self._store.run(self._core.op(op), _caller_connection(connection))

    async def spawn_many(
        self,
        task: TaskDefinition[Any, Any] | type[Task[Any, Any]] | str,
        params: Iterable[Any],
        *,
        options: SpawnOptions | None = None,
        idempotency_keys: Iterable[str | None] | None = None,
    ) -> list[SpawnResult[Any]]:
        """Spawn many tasks of one kind with shared options in one statement (all or none).

        The options are shared, so they cannot carry an idempotency key; give each task its
        own with `idempotency_keys` (one per params value, None for a task without one). A
        key that already names a task on the queue returns that task (``created`` False)
        and writes nothing for it, as `spawn` does. Tasks of one call sharing a key: the
        first of them is spawned, the later ones return it (``created`` False).
        """
        op = self._core.spawn_many(task, params, options, idempotency_keys)
        return await self._store.run(self._core.op(op))

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
        """The current state of a task with its attempts (each with its error), what it
        is waiting for, its children and headers, read in one snapshot; `TaskNotFound`
        if there is none."""
        return await self._store.run(self._core.read(self._core.get_task(task_id)))

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
        """Wait until the task ends; return its result typed as the task's Output:
        ``wait_result(spawned)`` with what a spawn returned, or ``wait_result(task,
        task_id)``.

        Raises `TaskFailed`, `TaskCancelled`, or `WaitTimeout` after `timeout` seconds
        (the task itself goes on). `task` may be a registered name (`UnknownTask`
        otherwise), or None for the stored plain JSON; `InvalidInput` if the task with
        this id is another task.
        """
        waiting = self._core.waiting(task, task_id)
        limit = math.inf if timeout is None else to_seconds(timeout, what="timeout")
        with trio.move_on_after(limit):
            for delay in poll_delays():
                info = await self._store.run(self._core.op(self._core.task_row(waiting.task_id)))
                done, value = waiting.outcome(info)
                if done:
                    return value
                await trio.sleep(delay)
        raise WaitTimeout(f"task {waiting.task_id} did not finish within {limit:g} seconds")

    # -- inspection and control -------------------------------------------------------

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
        op = self._core.list_tasks(
            queue=queue,
            state=state,
            name=name,
            created_after=created_after,
            created_before=created_before,
            parent=parent,
            limit=limit,
            after=after,
        )
        return await self._store.run(self._core.read(op))

    async def steps(self, task_id: UUID) -> list[StepInfo]:
        """Every checkpoint of a task in the order written (those a worker wrote in one
        transaction, by name): steps, and the library's own
        (spawns, joins, sleeps, events, emits, ctx.now/random/uuid7), with their stored
        JSON values and the attempt that wrote each. `TaskNotFound` if no such task."""
        return await self._store.run(self._core.read(self._core.steps(task_id)))

    async def queue_stats(
        self,
        queue: str | None = None,
        *,
        window: Duration = timedelta(hours=1),
        unserved_after: Duration = timedelta(minutes=5),
    ) -> QueueStats:
        """Counts for monitoring one queue (every queue when `queue` is None): live
        tasks by state, runs due now and the age of the oldest of them, failures and
        cancellations in the last `window`, runs due for longer than `unserved_after`
        whose task name no live worker has registered, in total and per task name. Reads
        only live runs, the runs that ended badly in `window` (partial indexes) and the
        workers registry, never the finished tasks, so it stays cheap to poll."""
        span = timedelta(seconds=to_seconds(window, what="window"))
        after = timedelta(seconds=to_seconds(unserved_after, what="unserved_after"))
        return await self._store.run(self._core.read(self._core.queue_stats(queue, span, after)))

    async def retry(
        self, task_id: UUID, *, max_attempts: int | None = None, from_scratch: bool = False
    ) -> RetryResult:
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
        op = self._core.retry(task_id, max_attempts, from_scratch)
        return await self._store.run(self._core.op(op))

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
        op = self._core.emit(name, payload, queue)
        return await self._store.run(self._core.op(op), _caller_connection(connection))

    async def cancel(self, task_id: UUID, reason: str = "cancelled by client") -> bool:
        """Cancel a task and all its unfinished descendants. Pending and sleeping tasks stop
        at once; a running attempt is cancelled through its trio cancel scope within one
        heartbeat (at once when the worker receives the notification). Returns False if
        the task had already ended."""
        return await self._store.run(self._core.op(self._core.cancel(task_id, reason)))

    async def cleanup(
        self,
        *,
        finished_before: datetime | timedelta | float | None = None,
        events_before: datetime | timedelta | float | None = None,
        batch: int = 1000,
        duty: float = 1.0,
    ) -> CleanupResult:
        """Remove old finished work; return what was removed.

        ``finished_before``: tasks that finished before then (an aware datetime, or an age
        such as ``timedelta(days=30)`` on the database's clock) go, with their runs,
        checkpoints and waits, unless their parent is still unfinished. ``events_before``:
        events emitted before then go (a task that waits for one later no longer finds
        it). Children's internal end events go once their parent has finished. Works in
        transactions of at most `batch` rows of each kind, taking no lock a claim or a
        worker's write waits on; a removed task's idempotency key may be used again.
        ``duty`` (above 0, at most 1) is the share of the time spent removing: after each
        batch the cleanup rests so that batches take no more (0.2: a batch of 40 ms, then
        160 ms of rest). Removing rows costs the database CPU that busy workers would use
        (with 1.0, the default, a cleanup takes about one core); see docs/operations.md.
        """
        batch = check_batch(batch)
        duty = check_duty(duty)
        now = await self._store.now()
        tasks_cut = cutoff(finished_before, what="finished_before", now=now)
        events_cut = cutoff(events_before, what="events_before", now=now)
        return await self._store.cleanup(tasks_cut, events_cut, batch, duty=duty)

    # -- schedules --------------------------------------------------------------------

    async def schedule(
        self,
        schedule_id: str,
        task: TaskDefinition[Any, Any] | type[Task[Any, Any]] | str,
        params: Any,
        *,
        cron: str,
        timezone: str = "UTC",
        options: SpawnOptions | None = None,
        missed: MissedPolicy = "latest",
    ) -> ScheduleInfo:
        """Create or replace the schedule `schedule_id`: spawn `task` with `params` at
        every slot of `cron` (five fields, or @hourly, @daily...) read in `timezone` (an
        IANA name). Workers of this schema spawn each slot's task exactly once, on the
        queue of `options` (or this client's), whichever of them finds it due first.

        `missed` says what happens to slots that passed while no worker ran: "skip"
        (spawn none; a slot found at most a minute late still runs), "latest" (spawn the
        latest one) or "all" (spawn each, at most the newest 100). `task` is a task
        definition, or a name with plain-JSON params (as `spawn_by_name`). Replacing a
        schedule keeps its next slot unless the cron or timezone changed, and keeps it
        paused if it was. Bad input raises `InvalidInput` and writes nothing.
        """
        return await _schedules.put_schedule(
            self._store,
            self._prepare_spawn,
            schedule_id,
            task,
            params,
            cron=cron,
            timezone=timezone,
            options=options,
            missed=missed,
        )

    async def unschedule(self, schedule_id: str) -> bool:
        """Delete a schedule; False if there was none. Tasks it spawned are not touched."""
        return await _schedules.delete_schedule(self._store, schedule_id)

    async def schedules(self) -> list[ScheduleInfo]:
        """Every schedule of this schema (all queues), by id."""
        return await _schedules.list_schedules(self._store)

    async def get_schedule(self, schedule_id: str) -> ScheduleInfo:
        """One schedule; `ScheduleNotFound` if there is none."""
        return await _schedules.get_schedule(self._store, schedule_id)

    async def pause_schedule(self, schedule_id: str) -> bool:
        """Stop spawning for this schedule until `resume_schedule`; False if it was paused
        already. `ScheduleNotFound` if there is none."""
        return await _schedules.pause_schedule(self._store, schedule_id)

    async def resume_schedule(self, schedule_id: str) -> bool:
        """Spawn again from the first slot after now (slots that passed while paused are
        not spawned); False if it was not paused. `ScheduleNotFound` if there is none."""
        return await _schedules.resume_schedule(self._store, schedule_id)

    # The short names read well beside schedule()/unschedule(); both spellings are kept.
    pause = pause_schedule
    resume = resume_schedule

    # -- workers ----------------------------------------------------------------------

    async def workers(self) -> list[WorkerInfo]:
        """The live workers of this schema, oldest first."""
        return await self._store.workers()

    async def unserved_tasks(
        self, threshold: timedelta | float = timedelta(minutes=5)
    ) -> list[UnservedTasks]:
        """Task names with runs due for longer than `threshold` that no live worker of
        their queue has registered (oldest first)."""
        seconds = to_seconds(threshold, what="threshold")
        return await self._store.unserved_tasks(seconds)

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
            hooks=self._core.hooks,
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


def _caller_connection(conn: object) -> Connection | None:
    """The `connection=` of a spawn or emit, checked before anything is written with it.
    An asyncio psycopg connection cannot be driven by trio: refused too."""
    if conn is None or isinstance(conn, (TrioConnection, psycopg.Connection)):
        return conn
    raise InvalidInput(
        "connection must be a connection from Durable.connection() or a psycopg.Connection "
        f"(to join its open transaction), got {type(conn).__name__}"
    )


def _require_trio() -> None:
    """This client runs under trio; say which one to use elsewhere (trio's own error,
    "must be called from async context", names no way out)."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = None
    if library != "trio":
        where = "asyncio" if library == "asyncio" else (library or "code that is not async")
        raise ConfigurationError(
            f"durable_trio.Durable is the trio client and this is {where}: use "
            "durable_trio.aio.Durable under asyncio, durable_trio.sync.Durable in blocking "
            "code (workers stay trio: run `durable-trio worker` or trio.run)"
        )
