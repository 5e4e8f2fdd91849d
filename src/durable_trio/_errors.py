"""Every exception durable_trio raises, under one base class.

Each docstring says when the error happens and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from uuid import UUID

import attrs

__all__ = [
    "ChildCancelled",
    "ChildFailed",
    "ConfigurationError",
    "DatabaseUnavailable",
    "DurableError",
    "EventTimeout",
    "InvalidInput",
    "LeaseLost",
    "NeverIdle",
    "NonRetryable",
    "ReplayMismatch",
    "RetryRefused",
    "ScheduleNotFound",
    "SerializationError",
    "StepFailed",
    "TaskCancelled",
    "TaskError",
    "TaskFailed",
    "TaskNotFound",
    "UnknownTask",
    "WaitTimeout",
    "WorkerFailed",
]


class DurableError(Exception):
    """Base class of every error raised by durable_trio."""


class InvalidInput(DurableError, ValueError):
    """An argument was rejected before anything was written to the database.

    The message names the argument and the accepted values; fix the call.
    """


class ConfigurationError(DurableError):
    """The client or worker is set up inconsistently (e.g. a task name registered twice,
    or no database URL given and ``DURABLE_DATABASE_URL`` unset)."""


class SerializationError(InvalidInput):
    """A value could not be converted to or from JSON with the declared type.

    At spawn time nothing is written. When a stored checkpoint no longer matches the type
    a step declares (the code changed under a running task), the attempt fails with this
    error; give the step a new name or make the type accept the stored shape.
    """


class DatabaseUnavailable(DurableError):
    """The database cannot be reached or refused the connection, or the client was used
    after it was closed.

    The message carries the URL with its password replaced by ``***``. Check that the
    server runs and the URL (or ``DURABLE_DATABASE_URL``) is right; a closed client
    stays closed: open another with ``Durable.connect``.
    """


class UnknownTask(DurableError):
    """A task name was used that this process has not registered.

    Spawning by name is allowed without registration (`Durable.spawn_by_name`), because
    workers elsewhere may hold the code; this error comes from calls that need the code
    here, such as `wait_result` with a task name whose Output type is unknown.
    """


class TaskNotFound(DurableError):
    """No task with this id exists in this client's schema (in any queue)."""

    def __init__(self, task_id: UUID) -> None:
        super().__init__(f"no task with id {task_id}")
        self.task_id = task_id


class RetryRefused(DurableError):
    """`Durable.retry` was asked to retry a task it may not: one that has not failed or
    been cancelled (`state` says where it stands: an unfinished task can be waited for or
    cancelled first; a completed one cannot run again, spawn a new task), or a
    child whose parent failed or was cancelled (retry the parent: the children cancelled
    with it get a new attempt too). Nothing was written."""

    def __init__(self, task_id: UUID, state: str, message: str) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.state = state


class ScheduleNotFound(DurableError):
    """No schedule with this id exists in this client's schema; `Durable.schedules`
    lists those that do."""

    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"no schedule with id {schedule_id!r}")
        self.schedule_id = schedule_id


@attrs.frozen
class TaskError(Mapping[str, Any]):
    """A task's stored failure, typed: ``type`` (the exception's qualified name),
    ``message``, ``traceback`` (None where none was kept), ``attempt`` (the attempt that
    failed) and ``retryable`` (False when it failed the task at once). ``raw`` is the
    stored JSON, which a `TaskError` also reads as a mapping (``error["type"]``,
    ``error.get("stage")``) for fields some failures add."""

    type: str
    message: str
    traceback: str | None
    attempt: int | None
    retryable: bool | None
    raw: dict[str, Any] = attrs.field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> TaskError:
        raw = dict(data or {})
        attempt = raw.get("attempt")
        retryable = raw.get("retryable")
        traceback = raw.get("traceback")
        return cls(
            type=str(raw.get("type", "Error")),
            message=str(raw.get("message", "")),
            traceback=traceback if isinstance(traceback, str) else None,
            attempt=attempt if isinstance(attempt, int) else None,
            retryable=retryable if isinstance(retryable, bool) else None,
            raw=raw,
        )

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)


class TaskFailed(DurableError):
    """The awaited task failed for good (attempts exhausted or a non-retryable error).
    `error` is its stored failure as a `TaskError` (type, message, traceback, attempt).
    Look at the task with `Durable.get_task` (every attempt's error), fix what failed,
    then `Durable.retry` it: it resumes from its checkpoints."""

    def __init__(self, task_id: UUID, error: Mapping[str, Any] | None) -> None:
        self.task_id = task_id
        self.error = error if isinstance(error, TaskError) else TaskError.from_json(error)
        super().__init__(f"task {task_id} failed: {self.error.type}: {self.error.message}")


class TaskCancelled(DurableError):
    """The awaited task was cancelled (by `Durable.cancel`, a cancellation policy, or
    because its parent ended)."""

    def __init__(self, task_id: UUID, reason: str | None = None) -> None:
        super().__init__(f"task {task_id} was cancelled" + (f": {reason}" if reason else ""))
        self.task_id = task_id
        self.reason = reason


class ChildFailed(TaskFailed):
    """Raised inside a parent task by `ctx.join` when the child failed for good.

    The parent may catch it; uncaught, it fails the parent's attempt like any error.
    """


class ChildCancelled(TaskCancelled):
    """Raised inside a parent task by `ctx.join` when the child was cancelled."""


class WaitTimeout(DurableError, TimeoutError):
    """`Durable.wait_result` gave up before the task reached a terminal state.

    The task keeps running; wait again or inspect it with `Durable.get_task`.
    """


class EventTimeout(DurableError, TimeoutError):
    """`ctx.await_event` reached its timeout before the event was emitted.

    The outcome is checkpointed: a replay raises this again at the same place, so a task
    may catch it and take another branch deterministically.
    """

    def __init__(self, event_name: str) -> None:
        super().__init__(f"timed out waiting for event {event_name!r}")
        self.event_name = event_name


class LeaseLost(DurableError):
    """This worker no longer owns the run (its lease expired and another worker, or a
    cancellation, took over). Nothing was written; the task's cancel scope is cancelled.
    User code normally never sees it."""


class ReplayMismatch(DurableError):
    """A replay did not find what earlier attempts stored: the task's code changed under
    a running task (a step renamed, reordered or removed, or a child spawned under the
    same name with a different task). Nothing new ran; the task failed without using
    its remaining attempts, and its checkpoints are kept.

    `stored` names the checkpoints left unreplayed, `requested` what the code asked for
    instead. Deploy code that takes the old path for such tasks (``ctx.patched()``, or
    ``WorkerOptions(version=...)`` to leave them to old workers), then retry the task:
    it resumes from its checkpoints. See docs/versioning.md.
    """

    def __init__(
        self, message: str, *, stored: Sequence[str] = (), requested: str | None = None
    ) -> None:
        super().__init__(message)
        self.stored = list(stored)
        self.requested = requested


class StepFailed(DurableError):
    """A step that failed in an earlier attempt, raised again on replay where its own
    exception type could not be rebuilt (`type` names it, `message` is its text). A step
    that raises is recorded, so a replay that went past it (the error was caught) takes
    the same path again instead of running the step a second time."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(
            f"{type_name}: {message} (a step failure replayed from an earlier attempt)"
        )
        self.type = type_name
        self.message = message


class NonRetryable(DurableError):
    """Raise this (or a subclass, or wrap another error in it) from task code to fail the
    task at once, without using the remaining attempts."""


class WorkerFailed(DurableError):
    """The worker run by ``async with client.worker():`` stopped with an unexpected error
    (a bug, or a database error it could not ride out); the original is ``__cause__``.

    The block was cancelled when it happened. The runs the worker held are retried once
    their leases expire, so no work is lost: log it and start a worker again. (An
    exception raised by the block itself is re-raised as it is, never as this.)
    """


class NeverIdle(DurableError):
    """`durable_trio.testing.run_until_idle(skip_time=True)` jumped the clock
    ``max_jumps`` times and work still came due: a task probably sleeps in a loop forever.

    Bound the simulated time with ``max_skip=`` (work due later is left asleep), raise
    ``max_jumps``, or step with `run_once` and `advance_clock` yourself.
    """
