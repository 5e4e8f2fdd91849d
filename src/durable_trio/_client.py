"""The client: spawn tasks, read their state, emit events, cancel, and run workers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from datetime import datetime, timedelta
from typing import Any, NoReturn, TypeVar

import psycopg
import sniffio
import trio

from . import _schedules
from ._clientcore import SpawnResult, TaskInfo
from ._core.durations import to_seconds
from ._core.options import SpawnOptions, WorkerOptions
from ._core.schedules import MissedPolicy
from ._db import CONNECTION_LOST, Pool, TrioConnection, connect, too_late
from ._ends import TrioEnds
from ._errors import (
    ConfigurationError,
    InvalidInput,
    WorkerFailed,
)
from ._fleet import UnservedTasks, WorkerInfo
from ._retention import CleanupResult, check_batch, check_duty, cutoff
from ._schedules import ScheduleInfo
from ._shell import AsyncShell, Call, Connects, Opening
from ._store import Connection, Store
from ._task import Task, TaskDefinition
from ._worker import Worker

__all__ = ["Durable", "SpawnResult", "TaskInfo"]

T = TypeVar("T")


class Durable(
    AsyncShell[TrioConnection | psycopg.Connection[Any]],
    Connects[AbstractAsyncContextManager["Durable"]],
):
    """A handle on one durable_trio schema and queue. Create it with `Durable.connect`.

    Spawning, reading, steering and events are the methods every client shares (see
    `_shell.Shell`); this one also runs workers and keeps schedules."""

    def _setup(self, pool_size: int) -> None:
        self._registry = self._core.registry
        self._pool = Pool(self.url, max_size=pool_size)
        self._store = Store(self._pool, self.schema)
        self._ends = TrioEnds(self.url, self.schema)

    @classmethod
    @asynccontextmanager
    async def _open(cls, opening: Opening) -> AsyncIterator[Durable]:
        _require_trio()
        client = cls._made(opening)
        try:
            with trio.move_on_after(opening.timeout) as waited:
                async with client._pool.acquire():
                    pass  # fail fast, with a clear error, if the database is unreachable
            if waited.cancelled_caught:
                raise too_late(opening.url, opening.timeout)
            if opening.migrate:
                await client.migrate()
            else:  # refused now, not at the first statement that finds something missing
                await client._store.check_schema()
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await client._ends.aclose()
                await client._pool.aclose()

    async def _execute(self, call: Call[T]) -> T:
        return await self._store.run(call.op, _caller_connection(call.connection))

    # -- registry and schema ----------------------------------------------------------

    def definition(self, name: str) -> TaskDefinition[Any, Any]:
        return self._core.definition(name)

    @property
    def registered(self) -> list[str]:
        return sorted(self._registry)

    async def migrate(self) -> list[int]:
        """Create or upgrade the schema (idempotent; concurrent callers are serialised)."""
        return await self._store.migrate()

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

    # -- maintenance ------------------------------------------------------------------

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
            self._core.spawn_row,
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
            prepare_spawn=self._core.spawn_row,
            options=options or WorkerOptions(),
            hooks=self._core.hooks,
        )

    @asynccontextmanager
    async def worker(self, options: WorkerOptions | None = None) -> AsyncIterator[Worker]:
        """Run a worker for the duration of the block.

        Leaving the block normally shuts the worker down gracefully. An exception raised
        in the block stops the worker at once (its runs are handed back, their attempts
        unspent, for any worker to take again) and is re-raised as it is, never wrapped
        in an ExceptionGroup, so a plain
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
