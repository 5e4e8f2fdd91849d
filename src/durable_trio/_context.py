"""TaskContext: what task code uses to checkpoint, sleep, wait, spawn and join.

Every method that records something is fenced: if this worker lost the run, nothing is
written and the task's cancel scope is cancelled (trio.Cancelled unwinds the task).
Methods that suspend the task (sleep, await_event, join on an unfinished child) record the
wait and then unwind with `Suspended`, a BaseException, so ``except Exception`` in task
code cannot swallow it.

Every awaitable method is a trio checkpoint, replays included: a long replay honours
cancellation and lets the worker's heartbeat run.

Replay rule (docs/versioning.md): an attempt must replay every checkpoint that earlier
attempts stored before anything runs for the first time (a step's body, a new sleep,
wait, spawn, emit or helper value, or the task's return). Otherwise the code changed
under the task and the attempt fails with `ReplayMismatch` instead of repeating, say, a
payment stored under a name the code no longer uses.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import inspect
import random as _random
import time
import typing
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar, overload
from uuid import UUID

import attrs
import trio

from . import _serde
from ._core import names
from ._core.durations import Duration, check_instant, to_seconds
from ._core.ids import uuid7 as make_uuid7
from ._core.lifecycle import RunEvent, RunPhase
from ._core.options import SpawnOptions, extend_seconds
from ._db import TrioConnection
from ._errors import (
    ChildCancelled,
    ChildFailed,
    DatabaseUnavailable,
    EventTimeout,
    InvalidInput,
    LeaseLost,
    ReplayMismatch,
    SerializationError,
    StepFailed,
)
from ._hooks import EmitCall, StepCall
from ._retrying import retrying
from ._run import RunState, Suspended
from ._task import Task, TaskDefinition, spawnable

T = TypeVar("T")
_UNSET: Any = object()
_PATCH = names.internal("patch", "")
# Concurrent trio tasks of a run replay in no fixed order: one that reaches something new
# while checkpoints are still unreplayed waits for its siblings to replay them. Past this
# many seconds without any of them replaying anything, the run is taken to have diverged.
REPLAY_WAIT = 30.0
# At most this many characters of a failed step's text and arguments are stored.
MAX_FAILURE_TEXT = 4000
_REPLAY_POLL = 0.05

__all__ = ["Suspended", "TaskContext", "TaskHandle"]


@attrs.frozen
class TaskHandle(Generic[T]):
    """A checkpointed reference to a child task, returned by `TaskContext.spawn`:
    ``TaskHandle[R]`` for a child task returning R, so `TaskContext.join` returns R."""

    task_id: UUID
    task_name: str
    queue: str
    output_type: Any = attrs.field(default=Any, eq=False)


class TaskContext:
    """Handed to every task attempt. See the module docstring for fencing and suspension."""

    def __init__(self, run: RunState) -> None:
        self._run = run
        self._namer = names.CheckpointNamer()
        self._checkpoints: dict[str, Any] = run.checkpoints
        self._resumed = bool(run.checkpoints)
        # The trio task that first used each name: see `_checkpoint_name`.
        self._name_users: dict[str, trio.lowlevel.Task] = {}
        # Checkpoints of earlier attempts this attempt has not replayed yet: see
        # `_replay_gate`. Patch markers are left out, so that code which no longer asks
        # (the patch was retired, or the deploy rolled back) still replays.
        self._unreplayed: set[str] = (
            {k for k in self._checkpoints if not k.startswith(_PATCH)}
            if self._checkpoints
            else set()
        )
        self._replayed = trio.Event()  # set when one is replayed; waiters re-check
        self._gated: set[trio.lowlevel.Task] = set()  # trio tasks waiting in the gate
        self._root = trio.lowlevel.current_task()  # the trio task running the task's code
        self._patches: dict[str, bool] = {}

    # -- identity ---------------------------------------------------------------------

    @property
    def task_id(self) -> UUID:
        """The task's id: the same on every attempt and after every resume."""
        return self._run.task_id

    @property
    def run_id(self) -> UUID:
        """This attempt's run (a retry is a new run; a resume continues the same one)."""
        return self._run.run_id

    @property
    def attempt(self) -> int:
        """This attempt's number, from 1 (at most the task's ``max_attempts``, which
        `Durable.retry` may raise)."""
        return self._run.attempt

    @property
    def resumed(self) -> bool:
        """Whether this run began with checkpoints stored by earlier runs to replay (a
        resume after a sleep, a wait or a join, or a retry), not from the start."""
        return self._resumed

    @property
    def headers(self) -> dict[str, Any]:
        """A copy of the task's headers (its spawn's, and what hooks added)."""
        return dict(self._run.headers)

    @property
    def queue(self) -> str:
        """The queue the task was spawned on; its children default to it."""
        return self._run.queue

    @property
    def task_name(self) -> str:
        """The registered name the task was spawned by."""
        return self._run.task_name

    def __repr__(self) -> str:
        return f"<TaskContext {self.task_name} task={self.task_id} attempt={self.attempt}>"

    # -- steps ------------------------------------------------------------------------

    # Two overloads, awaitable first: one signature taking ``Awaitable[T] | T`` lets mypy
    # solve T either way for an async function, and it picks neither.
    @overload
    async def step(
        self, name: str, fn: Callable[..., Awaitable[T]], *args: Any, result_type: Any = ...
    ) -> T: ...

    @overload
    async def step(
        self, name: str, fn: Callable[..., T], *args: Any, result_type: Any = ...
    ) -> T: ...

    async def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T] | T],
        *args: Any,
        result_type: Any = _UNSET,
    ) -> T:
        """Run ``fn(*args)`` once and checkpoint its result under `name`.

        On a replay the stored result is returned and `fn` is not called. `fn` may be sync
        or async; a sync function runs on the event loop, so wrap blocking calls with
        `trio.to_thread.run_sync` (see docs). The result type comes from `fn`'s return
        annotation unless `result_type` is given (pass it when `fn` is a wrapper such as
        ``trio.to_thread.run_sync``). Reusing a name within one trio task is fine: later
        uses are stored as ``name#2``, ``name#3``... Steps running concurrently (a
        nursery inside the task) need names of their own: a name used by a second trio
        task of the run raises `InvalidInput`, as its replay order would not be fixed.
        If earlier attempts stored checkpoints this one has not replayed when `fn` is
        about to run, the code changed: `ReplayMismatch`, and `fn` is not called.
        """
        checkpoint = self._next_name(name)
        rtype = _return_type(fn) if result_type is _UNSET else result_type
        hook = self._run.hooks.around_step
        if hook is None:
            return await self._step(checkpoint, fn, args, rtype)
        async with hook(self, StepCall(name, checkpoint, checkpoint in self._checkpoints)):
            return await self._step(checkpoint, fn, args, rtype)

    async def _step(
        self, checkpoint: str, fn: Callable[..., Awaitable[T] | T], args: Any, rtype: Any
    ) -> T:
        pending = self._run.last_write
        if (
            pending is None
            or pending.done.is_set()
            or self._unreplayed
            or checkpoint in self._checkpoints
        ):
            await trio.lowlevel.checkpoint()
        # Else `settle` below blocks until the previous write is done: that wait is this
        # call's checkpoint (one task switch less per step of a step after step loop).
        if checkpoint in self._checkpoints:
            return typing.cast(T, self._stored(checkpoint, _read_as(rtype)))
        failure = names.internal("failed", checkpoint)
        if self._replays_failure(failure):
            raise rebuild_error(self._checkpoints[failure])
        if self._unreplayed:
            await self._replay_gate(checkpoint)
        await self.settle()  # a step's body never runs before earlier steps are durable
        try:
            value = fn(*args)
            if inspect.isawaitable(value):
                value = await value
        except Exception as ex:
            self._run.step_raised(checkpoint, ex)
            self._record(failure, failure_record(ex), Any)
            raise
        return typing.cast(T, self._record(checkpoint, value, _declared(checkpoint, value, rtype)))

    def _replays_failure(self, failure: str) -> bool:
        """Whether this step failed in an earlier attempt that then went on (the error was
        caught: checkpoints stored after it are still to replay), so that the replay must
        raise it again. A failure that ended its attempt is not replayed: the step runs
        again, as a retry should."""
        if failure not in self._checkpoints:
            return False
        self._unreplayed.discard(failure)
        self._replayed.set()
        return bool(self._unreplayed)

    async def transaction(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        result_type: Any = _UNSET,
    ) -> T:
        """Run ``await fn(conn, *args)`` inside the same database transaction that stores
        its checkpoint: exactly-once for writes made through `conn` (a psycopg
        connection of this library's kind, whose rows are dicts: ``row["id"]``, not
        ``row[0]``; pass ``row_factory=psycopg.rows.tuple_row`` to ``conn.cursor()`` for
        tuples). The transaction also holds this run's lease lock, so a worker that lost
        the run can commit nothing."""
        checkpoint = self._next_name(name)
        rtype = _return_type(fn) if result_type is _UNSET else result_type
        return typing.cast(T, await self._transaction(checkpoint, fn, args, rtype))

    async def _transaction(
        self, checkpoint: str, fn: Callable[..., Awaitable[Any]], args: Any, rtype: Any
    ) -> Any:
        await trio.lowlevel.checkpoint()
        if checkpoint not in self._checkpoints and self._unreplayed:
            await self._replay_gate(checkpoint)
        await self.settle()
        if checkpoint in self._checkpoints:
            return self._stored(checkpoint, _read_as(rtype))

        async def attempt() -> Any:
            try:
                return await self._transaction_once(checkpoint, fn, args, rtype)
            except DatabaseUnavailable:
                # The connection died: the commit may or may not have landed. Look, and
                # run the transaction again only if it did not (its writes rolled back).
                stored = await self._run.call(
                    self._run.store.get_checkpoint, self.task_id, checkpoint
                )
                if stored is None:
                    raise
                self._checkpoints[checkpoint] = stored
                return self._stored(checkpoint, _read_as(rtype))

        try:
            return await retrying(
                attempt,
                retry_on=(DatabaseUnavailable,),
                deadline=lambda: self._run.lease_deadline,
            )
        except DatabaseUnavailable:
            await self._lost()

    async def _transaction_once(
        self, checkpoint: str, fn: Callable[..., Awaitable[Any]], args: Any, rtype: Any
    ) -> Any:
        store = self._run.store
        try:
            async with store.owned_transaction(self.run_id, self._run.worker_id) as (
                conn,
                task_id,
            ):
                value = await fn(conn, *args)
                text, replayed = _roundtrip(checkpoint, value, _declared(checkpoint, value, rtype))
                await store.insert_checkpoint(conn, task_id, self.run_id, checkpoint, text)
        except LeaseLost:
            await self._lost()
        self._checkpoints[checkpoint] = _serde.loads(text)
        return replayed

    def _stored(self, checkpoint: str, rtype: Any) -> Any:
        """A checkpointed value, read back as the type the code declares now."""
        try:
            return _serde.structure(self._checkpoints[checkpoint], rtype)
        except SerializationError as ex:
            raise SerializationError(
                f"step {checkpoint!r}: the checkpointed value no longer fits the declared "
                f"type ({ex}); give the step a new name or make the type accept it"
            ) from None

    def _record(self, checkpoint: str, value: Any, rtype: Any) -> Any:
        """Hand the checkpoint to the worker's writer and go on; see `settle`."""
        if self._run.lost is not None:  # shielded code still writing after the loss
            raise LeaseLost(self._run.lost)
        if self._run.state is RunPhase.SUSPENDED:  # a sibling trio task suspended the run
            raise Suspended()
        text, replayed = _roundtrip(checkpoint, value, rtype)
        self._run.writer.submit(self._run, checkpoint, text)
        self._checkpoints[checkpoint] = _serde.loads(text)
        return replayed

    async def settle(self) -> None:
        """Wait until every checkpoint recorded so far is durable. Called before anything
        else durable happens for this run (the writer keeps one run's writes in order)."""
        while True:
            if self._run.lost is not None:
                await self._lost()
            write = self._run.last_write
            if write is None:
                return
            if not write.done.is_set():
                await write.done.wait()
            if not write.owned:
                await self._lost()
            # Concurrent steps (a nursery inside the task) may have queued more meanwhile.
            if self._run.last_write is write:
                return

    def _next_name(self, name: str, *, kind: str | None = None) -> str:
        try:
            names.validate_name(name, what="step name")
        except ValueError as ex:
            raise InvalidInput(str(ex)) from None
        return self._checkpoint_name(names.internal(kind, name) if kind else name, name)

    def _checkpoint_name(self, base: str, shown: str) -> str:
        """The next checkpoint name for `base`. Repeats are numbered in call order, which
        is only the same on replay within one trio task: trio does not run the tasks of a
        nursery in a fixed order, so two of them reusing a name could get each other's
        values when the run is replayed. A name used by a second trio task is refused."""
        task = trio.lowlevel.current_task()
        first = self._name_users.setdefault(base, task)
        if first is not task:
            raise InvalidInput(
                f"{shown!r} was already used by another trio task of this run (a nursery "
                "inside the task?): uses from two trio tasks can be replayed in another "
                "order and get each other's values. Give each trio task its own names "
                f'(e.g. f"{shown}-{{i}}"), or call it in one task and pass the value on'
            )
        checkpoint = self._namer.next(base)
        if self._unreplayed and checkpoint in self._unreplayed:
            self._unreplayed.discard(checkpoint)
            self._replayed.set()
        return checkpoint

    # -- replay safety ----------------------------------------------------------------

    async def _replay_gate(self, requested: str) -> None:
        """Called before `requested` happens for the first time while checkpoints of earlier
        attempts are still unreplayed. Alone, the trio task fails the run at once. With
        siblings (a nursery inside the task) it first waits for them, as trio runs them
        in no fixed order: the run fails once none is left that could replay (all wait
        here, or for their children), or none replayed anything for `REPLAY_WAIT`."""
        me = trio.lowlevel.current_task()
        self._gated.add(me)
        try:
            left = len(self._unreplayed)
            give_up = trio.current_time() + REPLAY_WAIT
            while self._unreplayed and self._siblings_may_replay(me):
                if len(self._unreplayed) < left:
                    left = len(self._unreplayed)
                    give_up = trio.current_time() + REPLAY_WAIT
                elif trio.current_time() >= give_up:
                    break
                self._replayed = trio.Event()
                with trio.move_on_after(_REPLAY_POLL):
                    await self._replayed.wait()
        finally:
            self._gated.discard(me)
        if self._unreplayed:
            raise self._mismatch(requested)

    def _siblings_may_replay(self, me: trio.lowlevel.Task) -> bool:
        """Whether another trio task of this run is still running and neither waiting in
        the gate nor (as far as can be told) only waiting for trio tasks of its nursery."""
        tasks = [self._root]
        while tasks:
            task = tasks.pop()
            children = [c for n in task.child_nurseries for c in n.child_tasks]
            if children:
                tasks.extend(children)  # they stand for it (most likely it is in __aexit__)
            elif task is not me and task not in self._gated:
                return True
        return False

    def _mismatch(self, requested: str) -> ReplayMismatch:
        stored = sorted(self._unreplayed)
        shown = ", ".join(repr(n) for n in stored[:5]) + (
            f" and {len(stored) - 5} more" if len(stored) > 5 else ""
        )
        return ReplayMismatch(
            f"task {self.task_name!r} {self.task_id}: the code now asks for {requested!r}, "
            f"but checkpoints stored by an earlier attempt were not replayed: {shown}. The "
            "task's code changed under it (a step renamed, reordered or removed?) and "
            "running on could repeat work already done. Deploy code that takes the old "
            "path for this task (branch with ctx.patched(), or leave it to workers with "
            "WorkerOptions(version=...)), then retry the task: it resumes from its "
            "checkpoints.",
            stored=stored,
            requested=requested,
        )

    def _verify_replayed(self) -> None:
        """Called by the worker when the task's code returned: every checkpoint of earlier
        attempts must have been replayed (`ReplayMismatch` otherwise)."""
        if self._unreplayed:
            raise self._mismatch("the task's return")

    async def patched(self, change_id: str) -> bool:
        """Whether this run takes the new code path of the change `change_id`.

        True for a run that reaches this call for the first time with nothing left to
        replay (a run started on the new code, or one that had not got this far): the
        answer is checkpointed, so the run keeps taking the new path. False for a run
        that started before the change existed and is replaying past this point (it
        stored checkpoints later in the code and no marker here): take the old path, so
        the replay finds what it stored. The answer is the same for every call with
        `change_id` in one run. Once no run started before the change is left, the call
        can be removed, keeping the new path (markers are not checked by replay).
        """
        try:
            names.validate_name(change_id, what="change id")
        except ValueError as ex:
            raise InvalidInput(str(ex)) from None
        await trio.lowlevel.checkpoint()
        known = self._patches.get(change_id)
        if known is not None:
            return known
        marker = names.internal("patch", change_id)
        if marker in self._checkpoints:
            applies = True
        elif self._unreplayed:
            applies = False
        else:
            self._record(marker, True, bool)
            applies = True
        self._patches[change_id] = applies
        return applies

    async def _lost(self) -> typing.NoReturn:
        self._run.lose("a write was fenced: this worker no longer owns the run")
        await trio.lowlevel.checkpoint()
        # Only reached if the cancel scope could not fire (e.g. shielded code).
        raise LeaseLost("this worker no longer owns the run")

    async def _suspend(self, checkpoint: str) -> typing.NoReturn:
        self._run.advance(RunEvent.SUSPEND)
        raise Suspended(checkpoint)

    # -- deterministic helpers --------------------------------------------------------

    def _db_now(self) -> datetime:
        return self._run.claimed_at + timedelta(seconds=time.monotonic() - self._run.claimed_mono)

    async def now(self) -> datetime:
        """The database's current time, checkpointed: identical on replay."""
        return typing.cast(
            datetime,
            await self._helper("now", lambda: self._db_now().astimezone(UTC), datetime),
        )

    async def random(self) -> float:
        """A uniform float in [0, 1), checkpointed: identical on replay."""
        return typing.cast(float, await self._helper("random", _random.random, float))

    async def uuid7(self) -> UUID:
        """A fresh UUIDv7, checkpointed: identical on replay."""
        return typing.cast(UUID, await self._helper("uuid7", make_uuid7, UUID))

    async def _helper(self, kind: str, make: Callable[[], Any], rtype: Any) -> Any:
        checkpoint = self._checkpoint_name(names.internal(kind, ""), f"ctx.{kind}()")
        await trio.lowlevel.checkpoint()
        if checkpoint in self._checkpoints:
            return self._stored(checkpoint, rtype)
        if self._unreplayed:
            await self._replay_gate(checkpoint)
        return self._record(checkpoint, make(), rtype)

    # -- timers -----------------------------------------------------------------------

    async def sleep_for(self, name: str, duration: Duration) -> None:
        """Sleep durably for `duration` (seconds or timedelta, at most 100 years: see
        ``MAX_DURATION``) without holding a worker.

        The wake time is fixed by the first call and checkpointed; the task is suspended
        and resumed (replaying from the top) once it is due.
        """
        seconds = _duration(duration, "duration")
        await self._sleep(name, lambda now: now + timedelta(seconds=seconds))

    async def sleep_until(self, name: str, when: datetime) -> None:
        """Sleep durably until `when` (timezone-aware, at most 100 years ahead: see
        ``MAX_DURATION``) without holding a worker."""
        check_instant(when, what="sleep_until's time", now=self._db_now())
        await self._sleep(name, lambda _now: when)

    async def _sleep(self, name: str, wake_at_from: Callable[[datetime], datetime]) -> None:
        checkpoint = self._next_name(name, kind="sleep")
        await trio.lowlevel.checkpoint()
        stored = self._checkpoints.get(checkpoint)
        if stored is None:
            if self._unreplayed:
                await self._replay_gate(checkpoint)
            wake_at = wake_at_from(self._db_now())
            self._record(checkpoint, {"wake_at": wake_at}, dict[str, datetime])
        else:
            wake_at = _serde.structure(stored, dict[str, datetime])["wake_at"]
        if self._db_now() >= wake_at:  # already due (a replay, or a zero sleep)
            return
        await self.settle()
        self._run.advance(RunEvent.RECORD_WAIT)  # a heartbeat racing it: not a loss
        ok = await self._run.call(
            self._run.store.suspend, self.run_id, self._run.worker_id, wake_at
        )
        if not ok:
            await self._lost()
        await self._suspend(checkpoint)

    # -- events -----------------------------------------------------------------------

    @overload
    async def await_event(
        self,
        name: str,
        *,
        timeout: Duration | None = None,
        type: builtins.type[T],
    ) -> T: ...

    @overload
    async def await_event(
        self,
        name: str,
        *,
        timeout: Duration | None = None,
        type: Any = Any,
    ) -> Any: ...

    async def await_event(
        self,
        name: str,
        *,
        timeout: Duration | None = None,
        type: Any = Any,  # noqa: A002
    ) -> Any:
        """Wait for the event `name` on this task's queue and return its payload.

        An event emitted earlier is returned at once (events are sticky). While waiting
        the task is suspended and holds no worker slot. With `timeout` (seconds or a
        timedelta, at most 100 years; fixed by the first call), raises `EventTimeout`
        when it passes first; the outcome is checkpointed, so a replay takes the same
        branch. `type` converts the payload.
        """
        try:
            names.validate_name(name, what="event name")
        except ValueError as ex:
            raise InvalidInput(str(ex)) from None
        seconds = None if timeout is None else _duration(timeout, "timeout")
        checkpoint = self._next_name(name, kind="event")
        stored = await self._wait_for(self.queue, name, checkpoint, seconds)
        if "timeout" in stored:
            raise EventTimeout(name)
        try:
            return _serde.structure(stored.get("payload"), type)
        except SerializationError as ex:
            raise SerializationError(f"payload of event {name!r}: {ex}") from None

    async def _wait_for(
        self, queue: str, event: str, checkpoint: str, timeout: float | None
    ) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        if checkpoint in self._checkpoints:
            return typing.cast(dict[str, Any], self._checkpoints[checkpoint])
        if self._unreplayed:
            await self._replay_gate(checkpoint)
        await self.settle()
        self._run.advance(RunEvent.RECORD_WAIT)  # it may suspend: see _sleep
        outcome, payload = await self._run.call(
            self._run.store.await_event,
            self.run_id,
            self._run.worker_id,
            queue,
            event,
            checkpoint,
            None if timeout is None else timedelta(seconds=timeout),
        )
        if outcome == "fenced":
            await self._lost()
        if outcome == "suspended":
            await self._suspend(checkpoint)
        self._run.advance(RunEvent.WAIT_MET)
        stored = {"timeout": True} if outcome == "timeout" else {"payload": payload}
        self._checkpoints[checkpoint] = stored
        return stored

    async def emit_event(self, name: str, payload: Any = None) -> None:
        """Emit an event on this task's queue, exactly once (checkpointed with the emit)."""
        try:
            names.validate_name(name, what="event name")
        except ValueError as ex:
            raise InvalidInput(str(ex)) from None
        try:
            text = _serde.dumps(_serde.unstructure(payload))
        except SerializationError as ex:
            raise SerializationError(f"payload of event {name!r}: {ex}") from None
        checkpoint = self._next_name(name, kind="emit")
        if checkpoint in self._checkpoints:
            await trio.lowlevel.checkpoint()
            return
        if self._run.hooks.before_emit is not None:
            self._run.hooks.before_emit(EmitCall(name, self.queue, self.task_id))

        async def emit(conn: TrioConnection) -> None:
            await self._run.store.emit_event(self.queue, name, text, conn)

        await self._transaction(checkpoint, emit, (), None)

    # -- children ---------------------------------------------------------------------

    @overload
    async def spawn(
        self,
        name: str,
        task: TaskDefinition[Any, T] | type[Task[Any, T]],
        params: Any,
        options: SpawnOptions | None = None,
    ) -> TaskHandle[T]: ...

    @overload
    async def spawn(
        self, name: str, task: str, params: Any, options: SpawnOptions | None = None
    ) -> TaskHandle[Any]: ...

    async def spawn(
        self,
        name: str,
        task: TaskDefinition[Any, Any] | type[Task[Any, Any]] | str,
        params: Any,
        options: SpawnOptions | None = None,
    ) -> TaskHandle[Any]:
        """Spawn a child task once (checkpointed under `name`) and return its handle.

        A replay returns the same child; no duplicate is ever created. Children run on
        this task's queue unless ``options.queue`` says otherwise, and are cancelled
        when this task fails or is cancelled.
        """
        checkpoint = self._next_name(name, kind="spawn")
        if not isinstance(task, str):
            task = spawnable(task)  # a Task subclass too, as client.spawn takes
        task_name = task if isinstance(task, str) else task.name
        output_type = Any if isinstance(task, str) else task.output_type
        stored = self._checkpoints.get(checkpoint)
        if stored is not None:
            await trio.lowlevel.checkpoint()
            if stored["task_name"] != task_name:
                raise ReplayMismatch(
                    f"child {name!r} was spawned as {stored['task_name']!r}, "
                    f"now asked for {task_name!r}",
                    stored=[checkpoint],
                    requested=checkpoint,
                )
            return TaskHandle(UUID(stored["task_id"]), task_name, stored["queue"], output_type)
        row = self._run.prepare_spawn(
            task, params, options, parent=self.task_id, queue=self.queue, inherited=self.headers
        )

        async def insert(conn: TrioConnection) -> dict[str, Any]:
            spawned = await self._run.store.spawn(row, conn)
            if not spawned.created:
                await self._check_own_child(conn, spawned.task_id, row["idempotency_key"])
            return {"task_id": str(spawned.task_id), "task_name": task_name, "queue": row["queue"]}

        stored = await self._transaction(checkpoint, insert, (), dict[str, str])
        return TaskHandle(UUID(stored["task_id"]), task_name, stored["queue"], output_type)

    async def _check_own_child(self, conn: TrioConnection, task_id: UUID, key: str) -> None:
        """An idempotency key that named an existing task must name a child of this one:
        only a child reports its end to a join, and is cancelled with its parent."""
        if await self._run.store.parent_of(task_id, conn) != self.task_id:
            raise InvalidInput(
                f"idempotency_key {key!r} names task {task_id}, which is not a child of "
                f"this task: ctx.spawn returns only its own children (give the child a "
                f"key of its own, e.g. prefixed with this task's id)"
            )

    async def join(self, name: str, handle: TaskHandle[T]) -> T:
        """Wait for a child to finish and return its result (typed by the child's task).

        Suspends without holding a slot while the child runs. Raises `ChildFailed` or
        `ChildCancelled`, which the parent may catch.
        """
        if not isinstance(handle, TaskHandle):
            raise InvalidInput(f"join needs a TaskHandle from ctx.spawn, got {handle!r}")
        checkpoint = self._next_name(name, kind="join")
        stored = await self._wait_for(
            handle.queue, names.child_event(handle.task_id), checkpoint, None
        )
        outcome = stored.get("payload") or {}
        if outcome.get("state") == "completed":
            try:
                return typing.cast(T, _serde.structure(outcome.get("result"), handle.output_type))
            except SerializationError as ex:
                raise SerializationError(
                    f"result of child task {handle.task_name!r} {handle.task_id} "
                    f"(joined as {name!r}): {ex}"
                ) from None
        if outcome.get("state") == "failed":
            raise ChildFailed(handle.task_id, outcome.get("error"))
        raise ChildCancelled(handle.task_id, outcome.get("reason"))

    # -- leases -----------------------------------------------------------------------

    async def heartbeat(self, extend_by: Duration | None = None) -> None:
        """Renew this run's lease now, for at least `extend_by` (default: claim_timeout;
        at most 100 years, ``MAX_DURATION``).

        Call it inside long steps. If the lease was already lost, the task is cancelled.
        """
        lease = extend_seconds(extend_by, self._run.claim_timeout)
        renewed = await self._run.call(
            self._run.store.heartbeat, self._run.worker_id, [self.run_id], lease
        )
        if self.run_id not in renewed:
            await self._lost()


def _read_as(rtype: Any) -> Any:
    """What a stored value is read back as: plain JSON where no type was declared."""
    return Any if rtype is UNDETERMINED else rtype


def _roundtrip(checkpoint: str, value: Any, rtype: Any) -> tuple[str, Any]:
    try:
        return _serde.roundtrip(value, rtype)
    except SerializationError as ex:
        raise SerializationError(f"step {checkpoint!r}: {ex}") from None


def _duration(value: Duration, what: str) -> float:
    try:
        return to_seconds(value, what=what)
    except ValueError as ex:
        raise InvalidInput(str(ex)) from None


# A step function's result type when its annotations do not say (a lambda, a wrapper, a
# TypeVar): its value must then be plain JSON, or the step asks for ``result_type=``.
UNDETERMINED: Any = object()


@functools.lru_cache(maxsize=1024)
def _cached_return_type(fn: Callable[..., Any]) -> Any:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable annotations say nothing
        return UNDETERMINED
    if "return" not in hints or _has_typevar(hints["return"]):
        return UNDETERMINED
    hint = hints["return"]
    return None if hint is type(None) else hint


def _has_typevar(hint: Any) -> bool:
    if isinstance(hint, typing.TypeVar):
        return True
    return any(_has_typevar(arg) for arg in typing.get_args(hint))


def _return_type(fn: Callable[..., Any]) -> Any:
    target = fn.func if isinstance(fn, functools.partial) else fn
    try:
        return _cached_return_type(target)
    except TypeError:  # unhashable callable
        return UNDETERMINED


def _declared(checkpoint: str, value: Any, rtype: Any) -> Any:
    """The type to store a step's value as. With none declared, only plain JSON is taken:
    anything else would come back from a replay as something else (a dict for an attrs
    instance, a str for a datetime, a list for a tuple), silently."""
    if rtype is not UNDETERMINED:
        return rtype
    if _plain_json(value):
        return Any
    _roundtrip(checkpoint, value, Any)  # the converter's own refusal says more (bytes, sets)
    kind = type(value).__qualname__
    raise SerializationError(
        f"step {checkpoint!r} returned a {kind}, but its result type is unknown (the "
        "function has no return annotation, as with a lambda or a wrapper such as "
        f"trio.to_thread.run_sync, or it is a TypeVar): pass result_type={kind} so that "
        f"the step and its replays return a {kind}, not plain JSON"
    )


def _plain_json(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if type(value) is list:
        return all(_plain_json(item) for item in value)
    if type(value) is dict:
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    return False


def failure_record(ex: Exception) -> dict[str, Any]:
    """What is stored of a step's exception: its type, its text, and its arguments when
    they are plain JSON (so the same exception can be raised again on replay)."""
    try:
        message = str(ex)
    except Exception:  # noqa: BLE001  (a hostile __str__ must not hide the step's error)
        message = f"<{type(ex).__name__} whose str() failed>"
    record: dict[str, Any] = {
        "type": f"{type(ex).__module__}:{type(ex).__qualname__}",
        "message": message[:MAX_FAILURE_TEXT],
    }
    try:
        if len(_serde.dumps(list(ex.args))) <= MAX_FAILURE_TEXT:
            record["args"] = _serde.loads(_serde.dumps(list(ex.args)))
    except (SerializationError, TypeError, ValueError):  # not plain JSON: the message alone
        pass
    return record


def rebuild_error(record: dict[str, Any]) -> Exception:
    """The exception a recorded step failure stands for: its own type with its own
    arguments where that can be rebuilt, else `StepFailed` naming it."""
    module_name, _, qualname = str(record.get("type", "")).partition(":")
    message = str(record.get("message", ""))
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError, ValueError):
        found = None
    if isinstance(found, type) and issubclass(found, Exception):
        for args in (record.get("args"), [message]):
            if isinstance(args, list):
                try:
                    rebuilt: Exception = found(*args)
                except Exception:  # noqa: BLE001  (its own constructor: anything may fail)
                    continue
                return rebuilt
    return StepFailed(record.get("type", "?"), message)
