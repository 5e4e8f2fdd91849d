"""What every client does, without I/O: check and serialise input, build the SQL
operations (see `_sql`), and read their answers.

The trio `Durable`, `durable_trio.sync.Durable` and `durable_trio.aio.Durable` are thin
shells around one `ClientCore`: each runs these operations with its own executor and
sleeps with its own clock, so a spawn or a read means the same thing from every client.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import cache
from typing import Any, Generic, TypeVar
from uuid import UUID

import attrs
import psycopg

from . import _serde
from ._core import inspection
from ._core.durations import interval, to_seconds
from ._core.ids import uuid7, uuid7_texts
from ._core.names import validate_name, validate_queue, validate_schema
from ._core.options import SpawnOptions, check_idempotency_key
from ._core.states import TaskState
from ._errors import (
    ConfigurationError,
    InvalidInput,
    SerializationError,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    UnknownTask,
    WaitTimeout,
)
from ._hooks import NO_HOOKS, CancelCall, EmitCall, Hooks, SpawnCall
from ._inspect import (
    ChildSummary,
    QueueStats,
    RetryResult,
    RunInfo,
    StepInfo,
    TaskHead,
    TaskPage,
    WaitingFor,
)
from ._inspect import queue_stats as _queue_stats
from ._inspect import retry_result as _retry_result
from ._inspect import run_info as _run_info
from ._inspect import step_info as _step_info
from ._inspect import summary as _summary
from ._inspect import waiting_for as _waiting_for
from ._schema import query_texts, render
from ._sql import Op, Row, Statement, array_literal, guarded, nullable_array_literal
from ._task import Task, TaskDefinition, as_definition, spawnable

__all__ = ["ClientCore", "SpawnResult", "TaskInfo", "queries"]

T = TypeVar("T")
R = TypeVar("R")
# A spawn's result type: covariant, so a SpawnResult[int] goes where SpawnResult[object]
# is asked for (`wait_result`'s value passed to print, say).
R_co = TypeVar("R_co", covariant=True)

_DEFAULT_OPTIONS = SpawnOptions()
# spawn_tasks' shared parameters, in its order after each item's ids, params and key.
SPAWN_SHARED = (
    "queue",
    "task_name",
    "headers",
    "retry",
    "max_attempts",
    "priority",
    "delay",
    "start_at",
    "max_pending_delay",
    "max_duration",
    "parent",
)
MAX_PLANS = 256  # cached spawn plans per client (see ClientCore.plan)
MAX_CHILDREN_SHOWN = 100
TaskRef = TaskDefinition[Any, Any] | type[Task[Any, Any]]


@attrs.frozen
class SpawnResult(Generic[R_co]):
    """What a spawn returns. ``created`` is False when an idempotency key matched an
    existing task (whose ids are returned and nothing was written).

    It also remembers the task's name and Output type, so ``wait_result(spawned)``
    returns the result typed (``SpawnResult[R]`` from a spawn of a task returning R)."""

    task_id: UUID
    run_id: UUID
    attempt: int
    created: bool = True
    task_name: str | None = attrs.field(
        default=None, eq=False, repr=False, metadata={"private": True}
    )
    output_type: Any = attrs.field(default=Any, eq=False, repr=False, metadata={"private": True})


@attrs.frozen
class TaskInfo(TaskHead):
    """A snapshot of one task. ``result`` and ``error`` are stored JSON; use
    `Durable.wait_result` for a typed result. ``error`` is the latest failed attempt's
    error: a task that succeeded on a retry keeps it (with ``state`` COMPLETED).

    ``attempts`` is the number of the task's latest attempt: 1 from the spawn on, one more
    each time a failed attempt (an error, or a lease that expired) is followed by a retry,
    counted when the retry is scheduled, before it starts. A run handed back by a worker
    shutting down, or resumed after a sleep or a wait, is the same attempt.
    ``next_attempt_at`` is when that scheduled retry is due while it waits (state
    PENDING, attempts > 1, not yet claimed); None otherwise.
    """

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
    #: Every attempt, oldest first (`Durable.get_task` fills these four).
    runs: list[RunInfo] = attrs.field(factory=list)
    #: What keeps the task from running now, if not a free worker (None otherwise).
    waiting_for: WaitingFor | None = None
    #: The first children by id (at most 100); `child_count` says how many there are,
    #: ``list_tasks(parent=task_id)`` pages through all of them.
    children: list[ChildSummary] = attrs.field(factory=list)
    child_count: int = 0
    next_attempt_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.state.terminal


@cache
def queries(schema: str) -> dict[str, str]:
    """The named statements of sql/queries.sql with `schema` put in."""
    return {name: render(text, schema) for name, text in query_texts().items()}


def named(schema: str, name: str, params: Any = None, *, prepare: bool | None = None) -> Statement:
    return Statement(queries(schema)[name], params, prepare=prepare)


def snapshot(op: Op[T]) -> Op[T]:
    """Run `op` in one read-only repeatable-read transaction, so the parts of one answer
    agree (on an autocommit connection: the pools' connections)."""
    yield Statement("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    try:
        value = yield from op
    except psycopg.Error:
        yield Statement("ROLLBACK")
        raise
    yield Statement("COMMIT")
    return value


@attrs.frozen
class SpawnPlan:
    """What spawns of one task with one SpawnOptions share, checked and serialised: a
    client spawning in a loop pays for it once (ClientCore.plan), not once per spawn."""

    task: Any  # what the caller passed (a definition, a Task class or a name)
    options: SpawnOptions | None  # likewise
    source: SpawnOptions  # the options used: those given, or the task's defaults
    headers: dict[str, Any]  # a copy of their headers (a dict may change in place)
    name: str
    known: TaskDefinition[Any, Any] | None
    typed: bool  # params go through the Params type (spawned by definition)
    key: str | None
    shared: tuple[Any, ...]  # SPAWN_SHARED's values
    output: Any

    def fits(self, task: Any, options: SpawnOptions | None) -> bool:
        """Whether this plan is still the one for spawning `task` with `options`."""
        return self.task is task and self.options is options and self.headers == self.source.headers

    def row(self, params: Any) -> dict[str, Any]:
        """One spawn's row (the shape `insert` and schedules take)."""
        text = params_json(self.name, params, self.known, typed=self.typed)
        shared = dict(zip(SPAWN_SHARED, self.shared, strict=True))
        row = {"task_id": uuid7(), "run_id": uuid7(), "params": text, **shared}
        return {**row, "idempotency_key": self.key}


class ClientCore:
    """One client's queue, schema and registered tasks, and the operations it runs."""

    def __init__(self, *, queue: str, schema: str, hooks: Hooks | None = None) -> None:
        self.queue = checked_queue(queue)
        self.schema = validate_schema(schema)
        self.registry: dict[str, TaskDefinition[Any, Any]] = {}
        if hooks is not None and not isinstance(hooks, Hooks):
            raise InvalidInput(f"hooks must be a durable_trio.Hooks, got {hooks!r}")
        self.hooks = hooks or NO_HOOKS
        self._plans: dict[tuple[int, int], SpawnPlan] = {}

    def op(self, op: Op[T]) -> Op[T]:
        return guarded(self.schema, op)

    def read(self, op: Op[T]) -> Op[T]:
        return guarded(self.schema, snapshot(op))

    # -- registry ---------------------------------------------------------------------

    def register(self, *tasks: TaskRef) -> None:
        for obj in tasks:
            definition = as_definition(obj)
            checked(validate_name, definition.name, what="task name")  # even if set by hand
            existing = self.registry.get(definition.name)
            if existing is not None and existing.fn is not definition.fn:
                raise ConfigurationError(f"a task named {definition.name!r} is already registered")
            self.registry[definition.name] = definition
        self._plans.clear()  # a spawn by name now checks its params against the task

    def definition(self, name: str) -> TaskDefinition[Any, Any]:
        try:
            return self.registry[name]
        except KeyError:
            raise UnknownTask(f"no task named {name!r} is registered on this client") from None

    # -- spawning ---------------------------------------------------------------------

    def spawn_plan(
        self,
        task: TaskRef | str,
        options: SpawnOptions | None,
        *,
        parent: UUID | None = None,
        queue: str | None = None,
        inherited: Mapping[str, Any] | None = None,
        hook: bool = True,
    ) -> SpawnPlan:
        """Validate and serialise what spawns of `task` with `options` share. `queue` is
        the default when the options name none (a child goes to its parent's queue); a
        child starts from its parent's headers (`inherited`), its options' over them.
        `hook=False` leaves out the before_spawn hook (a schedule's stored settings: the
        hook runs for each slot's task when it is fired)."""
        if isinstance(task, str):
            name = checked(validate_name, task, what="task name")
            known = self.registry.get(name)
            defaults = known.options if known is not None else None
        else:
            known = spawnable(task)
            name = known.name
            defaults = known.options
        opts = options if options is not None else (defaults or _DEFAULT_OPTIONS)
        if not isinstance(opts, SpawnOptions):
            raise InvalidInput(f"options must be a SpawnOptions, got {opts!r}")
        source = opts
        target = opts.queue or queue or self.queue
        if inherited:
            opts = attrs.evolve(opts, headers={**inherited, **opts.headers})
        if hook and self.hooks.before_spawn is not None:
            call = SpawnCall(name, target, opts.headers, parent)
            opts = attrs.evolve(opts, headers=self.hooks.spawn_headers(call))
        common = _spawn_options(opts, name, target, parent)
        output = Any if known is None else known.output_type
        return SpawnPlan(
            task,
            options,
            source,
            dict(source.headers),
            name,
            known,
            not isinstance(task, str),
            common["idempotency_key"],
            tuple(common[field] for field in SPAWN_SHARED),
            output,
        )

    def plan(self, task: TaskRef | str, options: SpawnOptions | None) -> SpawnPlan:
        """`spawn_plan` for a top-level spawn, cached by the identity of `task` and
        `options` (and checked against headers changed in place since). Not cached with a
        before_spawn hook, which may give every spawn its own headers."""
        if self.hooks.before_spawn is not None:
            return self.spawn_plan(task, options)
        slot = (id(task), id(options))
        plan = self._plans.get(slot)
        if plan is not None and plan.fits(task, options):
            return plan
        plan = self.spawn_plan(task, options)
        if len(self._plans) >= MAX_PLANS:
            self._plans.clear()
        self._plans[slot] = plan
        return plan

    def spawn_row(
        self,
        task: TaskRef | str,
        params: Any,
        options: SpawnOptions | None,
        *,
        parent: UUID | None = None,
        queue: str | None = None,
        inherited: Mapping[str, Any] | None = None,
        hook: bool = True,
    ) -> dict[str, Any]:
        """Validate and serialise one spawn into the row `insert` takes (a task's
        children and schedules go through here; see `spawn_plan`)."""
        plan = self.spawn_plan(
            task, options, parent=parent, queue=queue, inherited=inherited, hook=hook
        )
        return plan.row(params)

    def spawn(
        self,
        task: TaskDefinition[Any, R] | type[Task[Any, R]],
        params: Any,
        options: SpawnOptions | None,
    ) -> Op[SpawnResult[R]]:
        if isinstance(task, str):
            raise InvalidInput("spawn() takes a task definition; use spawn_by_name() for names")
        plan = self.plan(task, options)
        text = params_json(plan.name, params, plan.known, typed=True)
        return spawn_one(self.schema, plan, text)

    def spawn_by_name(
        self, name: str, params: Any, options: SpawnOptions | None
    ) -> Op[SpawnResult[Any]]:
        plan = self.plan(name, options)
        text = params_json(plan.name, params, plan.known, typed=plan.typed)
        return spawn_one(self.schema, plan, text)

    def spawn_many(
        self,
        task: TaskRef | str,
        params: Iterable[Any],
        options: SpawnOptions | None,
        idempotency_keys: Iterable[str | None] | None = None,
    ) -> Op[list[SpawnResult[Any]]]:
        """Many spawns of one task with shared options in one statement. Each may have its
        own idempotency key (`idempotency_keys`, one per params value, None for none): see
        the spawn_tasks function for keys that exist or repeat within the batch."""
        plan = self.plan(task, options)
        if plan.key is not None:  # given, or the task's default
            raise InvalidInput(
                "spawn_many shares its options between every task, so an idempotency_key "
                "in them would make all but the first a duplicate: give each task its own "
                "key with idempotency_keys=, spawn them one by one with a key each, or drop "
                "the key"
            )
        texts = [params_json(plan.name, value, plan.known, typed=plan.typed) for value in params]
        keys = _many_keys(idempotency_keys, len(texts))
        if not texts:
            return []
        ids = uuid7_texts(2 * len(texts))  # hex digits: nothing to quote
        arrays = (
            "{" + ",".join(ids[: len(texts)]) + "}",
            "{" + ",".join(ids[len(texts) :]) + "}",
            array_literal(texts),
            None if keys is None else nullable_array_literal(keys),
        )
        query = queries(self.schema)["spawn_tasks"]
        spawned = yield Statement(query, (*arrays, *plan.shared))
        return [spawn_result(row, plan.name, plan.output) for row in spawned]

    # -- events and cancellation ------------------------------------------------------

    def emit(self, name: str, payload: Any, queue: str | None) -> Op[int]:
        event = checked(validate_name, name, what="event name")
        target = checked_queue(self.queue if queue is None else queue)
        with about(f"payload of event {event!r}"):
            text = _serde.dumps(_serde.unstructure(payload))
        if self.hooks.before_emit is not None:
            self.hooks.before_emit(EmitCall(event, target))
        return (yield from deliver(self.schema, target, event, text))

    def cancel(self, task_id: Any, reason: str) -> Op[bool]:
        target = as_uuid(task_id)
        if not isinstance(reason, str) or "\x00" in reason:
            raise InvalidInput(
                f"cancel reason must be text without NUL characters, got {reason!r:.80}"
            )
        if not (yield named(self.schema, "get_task", {"task_id": target})):
            raise TaskNotFound(target)
        if self.hooks.before_cancel is not None:
            self.hooks.before_cancel(CancelCall(target, reason))
        rows = yield named(self.schema, "cancel_task", {"task_id": target, "reason": reason})
        return bool(rows[0]["cancelled"])

    def retry(self, task_id: Any, max_attempts: int | None, from_scratch: bool) -> Op[RetryResult]:
        target = as_uuid(task_id)
        limit = inspection.max_attempts(max_attempts)
        if not isinstance(from_scratch, bool):
            raise InvalidInput(f"from_scratch must be True or False, got {from_scratch!r}")
        params = {
            "task_id": target,
            "run_id": uuid7(),
            "max_attempts": limit,
            "from_scratch": from_scratch,
        }
        rows = yield named(self.schema, "retry_task", params)
        return _retry_result(target, rows[0], max_attempts)

    # -- reading (run `get_task`, `list_tasks`, `steps` with `read`) -------------------

    def task_row(self, task_id: UUID) -> Op[TaskInfo]:
        """The task's own row only (what `wait_result` polls)."""
        rows = yield named(self.schema, "get_task", {"task_id": task_id})
        if not rows:
            raise TaskNotFound(task_id)
        return TaskInfo(**{**rows[0], "state": TaskState(rows[0]["state"])})

    def get_task(self, task_id: Any) -> Op[TaskInfo]:
        target = as_uuid(task_id)
        params = {"task_id": target, "limit": MAX_CHILDREN_SHOWN}

        def read(name: str) -> Statement:
            return named(self.schema, name, params, prepare=False)

        rows = yield read("get_task")
        if not rows:
            raise TaskNotFound(target)
        row = rows[0]
        state = TaskState(row["state"])
        runs = [_run_info(r) for r in (yield read("task_runs"))]
        wait = next(iter((yield read("task_wait"))), None)
        children = yield read("task_children")
        now = (yield named(self.schema, "now", {}))[0]["now"]
        last = next((r for r in runs if r.run_id == row["last_run_id"]), None)
        return TaskInfo(
            **{**row, "state": state},
            runs=runs,
            waiting_for=_waiting_for(state, last, wait, now),
            children=[
                ChildSummary(c["task_id"], c["task_name"], TaskState(c["state"])) for c in children
            ],
            child_count=children[0]["total"] if children else 0,
        )

    def list_tasks(self, filters: tuple[Any, ...], limit: int, after: UUID | None) -> Op[TaskPage]:
        """`filters`: queue, state, name, created_after, created_before and parent, as
        `Durable.list_tasks` takes them."""
        checked = _list_filters(*filters)
        wanted = inspection.page_limit(limit)
        params = {**checked, "after": None if after is None else as_uuid(after, "after")}
        params["limit"] = wanted + 1  # one more tells whether another page follows
        chosen = None if checked["state"] is None else TaskState(checked["state"])
        query = inspection.list_query(chosen)
        rows = yield named(self.schema, query, params, prepare=False)
        items = [_summary(row) for row in rows[:wanted]]
        more = len(rows) > wanted
        return TaskPage(items, items[-1].task_id if more else None)

    def steps(self, task_id: Any) -> Op[list[StepInfo]]:
        target = as_uuid(task_id)
        rows = yield named(self.schema, "task_steps", {"task_id": target}, prepare=False)
        if not rows:
            raise TaskNotFound(target)
        return [_step_info(row) for row in rows if row["name"] is not None]

    def queue_stats(
        self, queue: str | None, window: timedelta, unserved_after: timedelta
    ) -> Op[QueueStats]:
        target = None if queue is None else checked_queue(queue)
        params = {"queue": target, "window": window, "unserved_after": unserved_after}
        now = (yield named(self.schema, "now", {}))[0]["now"]
        live = yield named(self.schema, "queue_live", params, prepare=False)
        ended = yield named(self.schema, "queue_ended", params, prepare=False)
        return _queue_stats(target, now, window, live, ended, unserved_after=unserved_after)

    # -- waiting for a result ---------------------------------------------------------

    def waiting(
        self, task: TaskRef | str | SpawnResult[Any] | None, task_id: Any, timeout: Any
    ) -> Waiting:
        """What `wait_result(task, task_id)` or `wait_result(spawned)` waits for."""
        limit = math.inf if timeout is None else to_seconds(timeout, what="timeout")
        if isinstance(task, SpawnResult):
            if task_id is not None:
                raise InvalidInput("wait_result(spawned) takes no task_id: it is in `spawned`")
            return Waiting(task.task_id, task.task_name, task.output_type, limit)
        if task_id is None:
            raise InvalidInput("wait_result needs a task_id (or a SpawnResult alone)")
        expected = task if task is None or isinstance(task, str) else as_definition(task).name
        return Waiting(as_uuid(task_id), expected, output_type(task, self.registry), limit)


@attrs.frozen
class Waiting:
    """What `wait_result` waits for: settle each polled `TaskInfo` with `outcome`."""

    task_id: UUID
    expected: str | None
    output_type: Any
    limit: float  # seconds, from the `timeout`

    def timed_out(self) -> WaitTimeout:
        return WaitTimeout(f"task {self.task_id} did not finish within {self.limit:g} seconds")

    def outcome(self, info: TaskInfo) -> tuple[bool, Any]:
        """(True, typed result) once completed; (False, None) while unfinished; raises
        TaskFailed / TaskCancelled, or InvalidInput for a task of another name."""
        if self.expected is not None and info.task_name != self.expected:
            raise InvalidInput(
                f"task {self.task_id} is a {info.task_name!r} task, not {self.expected!r}: "
                "pass its own task (or None for its plain JSON result)"
            )
        if info.state is TaskState.COMPLETED:
            with about(f"result of task {info.task_name!r} {self.task_id}"):
                return True, _serde.structure(info.result, self.output_type)
        if info.state is TaskState.FAILED:
            raise TaskFailed(self.task_id, info.error)
        if info.state is TaskState.CANCELLED:
            raise TaskCancelled(self.task_id, info.cancel_reason)
        return False, None


# The channel notify_end.sql announces ended tasks on: "<schema> <task_id>,<task_id>,...".
END_CHANNEL = "durable_trio_end"
# How often `wait_result` reads the task anyway, should a notification never come (a
# listening connection that dropped is noticed at once; this covers the rest).
SAFETY_POLL = 1.5


def ended_tasks(schema: str, payload: str) -> list[str]:
    """The task ids an END_CHANNEL payload announces for `schema` (none for another)."""
    where, _, ids = payload.partition(" ")
    return ids.split(",") if where == schema and ids else []


class Watcher:
    """One `wait_result` call's interest in one task, woken by `Watchers.announce`."""

    def __init__(self, task_id: UUID) -> None:
        self.key = str(task_id)
        self.ended = False

    def wake(self) -> None:
        """The task ended, or its end may have been missed: read it again (each client
        adds how a sleeping waiter is woken)."""
        self.ended = True

    def nudge(self) -> None:
        """Another waiter stopped reading the notifications: one asleep should take over."""


class Watchers:
    """Who waits for which task, and telling them (shared by every client's waiters)."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._by_key: dict[str, list[Watcher]] = {}

    def add(self, watcher: Watcher) -> None:
        self._by_key.setdefault(watcher.key, []).append(watcher)

    def remove(self, watcher: Watcher) -> None:
        others = self._by_key.get(watcher.key, [])
        others.remove(watcher)
        if not others:
            del self._by_key[watcher.key]

    def announce(self, payload: str) -> None:
        for key in ended_tasks(self.schema, payload):
            for watcher in self._by_key.get(key, ()):
                watcher.wake()

    def wake_all(self) -> None:
        """Notifications may have been missed (a new or lost connection): all read again."""
        for watchers in self._by_key.values():
            for watcher in watchers:
                watcher.wake()

    def nudge_all(self) -> None:
        for watchers in self._by_key.values():
            for watcher in watchers:
                watcher.nudge()


# -- operations the worker side shares ----------------------------------------------------


def spawn_one(schema: str, plan: SpawnPlan, params: str) -> Op[SpawnResult[Any]]:
    """One spawn of `plan` with its params as JSON text: one statement (see `_spawn`),
    the same text every time, so psycopg prepares it on each connection after a few uses
    (and leaves it unprepared on a connection configured not to prepare, e.g. behind
    pgbouncer)."""
    task_id, run_id = uuid7_texts(2)  # one call for both ids' randomness
    values = (task_id, run_id, params, plan.key, *plan.shared)
    row = yield from _spawn(schema, values)
    return spawn_result(row, plan.name, plan.output)


def insert(schema: str, row: dict[str, Any], output: Any = Any) -> Op[SpawnResult[Any]]:
    """One spawn row (see `ClientCore.spawn_row`) into the tables."""
    values = (row["task_id"], row["run_id"], row["params"], row["idempotency_key"])
    shared = tuple(row[field] for field in SPAWN_SHARED)
    spawned = yield from _spawn(schema, (*values, *shared))
    return spawn_result(spawned, row["task_name"], output)


def _spawn(schema: str, values: tuple[Any, ...]) -> Op[Row]:
    """The spawned task's row. A second statement only when the idempotency key named a
    task already (no row from the first): spawn_tasks reports that one."""
    rows = yield Statement(queries(schema)["spawn_one"], values)
    if not rows:
        rows = yield Statement(queries(schema)["spawn_one_existing"], values)
    return rows[0]


def deliver(schema: str, queue: str, event: str, payload: str) -> Op[int]:
    """Store an event (checked names, JSON text) and wake its waiters; how many woke."""
    params = {"queue": queue, "event": event, "payload": payload}
    rows = yield named(schema, "emit_event", params)
    return int(rows[0]["woken"])


# -- helpers ----------------------------------------------------------------------------


def _spawn_options(
    opts: SpawnOptions, name: str, queue: str, parent: UUID | None
) -> dict[str, Any]:
    policy = opts.cancellation
    with about("headers"):
        headers_json = _serde.dumps(_serde.unstructure(opts.headers))
    return {
        "queue": queue,
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


def _many_keys(keys: Iterable[str | None] | None, count: int) -> list[str | None] | None:
    """spawn_many's idempotency keys, checked: one per task (None: no keys at all)."""
    if keys is None:
        return None
    if isinstance(keys, str | bytes):
        raise InvalidInput("idempotency_keys must be a list of keys (or None), one per task")
    listed = [
        check_idempotency_key(key, what=f"idempotency_keys[{i}]") for i, key in enumerate(keys)
    ]
    if len(listed) != count:
        raise InvalidInput(
            f"idempotency_keys has {len(listed)} keys for {count} tasks: give one per task "
            "(None for a task without a key)"
        )
    return listed


def spawn_result(row: Row, task_name: str, output: Any) -> SpawnResult[Any]:
    created = row.get("created", True)
    return SpawnResult(row["task_id"], row["run_id"], row["attempt"], created, task_name, output)


def as_uuid(value: Any, what: str = "task_id") -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise InvalidInput(f"{what} must be a UUID, got {value!r}") from None


def checked(validate: Any, value: Any, **kwargs: Any) -> str:
    try:
        result: str = validate(value, **kwargs)
    except ValueError as ex:
        raise InvalidInput(str(ex)) from None
    return result


def checked_queue(value: Any) -> str:
    return checked(validate_queue, value)


def _list_filters(
    queue: Any, state: Any, name: Any, after: Any, before: Any, parent: Any
) -> dict[str, Any]:
    """list_tasks' filters, checked, as the statement's parameters (None: not filtered)."""
    return {
        "queue": None if queue is None else checked_queue(queue),
        "state": None if state is None else inspection.task_state(state).value,
        "name": None if name is None else checked(validate_name, name, what="task name"),
        "created_after": None if after is None else inspection.aware(after, what="created_after"),
        "created_before": None
        if before is None
        else inspection.aware(before, what="created_before"),
        "parent": None if parent is None else as_uuid(parent, "parent"),
    }


def output_type(task: Any, registry: dict[str, TaskDefinition[Any, Any]]) -> Any:
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


def params_json(
    name: str, params: Any, known: TaskDefinition[Any, Any] | None, *, typed: bool
) -> str:
    """Params as JSON. By definition: through its Params type. By name: plain JSON, which
    must still fit the Params type when the task is registered here."""
    with about(f"params of task {name!r}"):
        if typed and known is not None:
            return _serde.roundtrip(params, known.params_type)[0]
        text = _serde.dumps(_serde.unstructure(params))
        if known is not None:
            _serde.structure(_serde.loads(text), known.params_type)
        return text


@contextmanager
def about(what: str) -> Iterator[None]:
    """Say which argument a serialisation error is about."""
    try:
        yield
    except SerializationError as ex:
        raise SerializationError(f"{what}: {ex}") from None
