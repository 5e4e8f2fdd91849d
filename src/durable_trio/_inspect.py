"""What the inspection API returns: typed snapshots of tasks, their attempts, waits,
steps and queues (`Durable.list_tasks`, `get_task`, `steps`, `queue_stats`, `retry`).

Built from the store's rows here, so the client only validates and delegates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import attrs

from ._core import inspection
from ._core.states import TaskState
from ._errors import InvalidInput, RetryRefused, TaskNotFound

__all__ = [
    "ChildSummary",
    "NameStats",
    "QueueStats",
    "RetryResult",
    "RunError",
    "RunInfo",
    "StepInfo",
    "TaskHead",
    "TaskPage",
    "TaskSummary",
    "WaitingFor",
    "WaitingForChild",
    "WaitingForEvent",
    "WaitingForTime",
]

Row = Mapping[str, Any]


@attrs.frozen
class TaskHead:
    """The fields `TaskSummary` and `TaskInfo` both begin with."""

    task_id: UUID
    queue: str
    task_name: str
    state: TaskState
    attempts: int
    max_attempts: int
    priority: int


@attrs.frozen
class TaskSummary(TaskHead):
    """One task in a `TaskPage`: who it is and where it stands (no params or results)."""

    parent_task_id: UUID | None
    cancel_reason: str | None
    created_at: datetime
    first_started_at: datetime | None
    finished_at: datetime | None


@attrs.frozen
class TaskPage:
    """One page of `Durable.list_tasks`, in task_id order (task ids are UUIDv7, so this is
    creation time to the millisecond; tasks of one millisecond in no particular order).
    ``next_after`` is the cursor of the next page (pass it as ``after=``), or None when
    this page is the last."""

    items: list[TaskSummary]
    next_after: UUID | None


@attrs.frozen
class RunError:
    """The error an attempt failed with, as the worker stored it."""

    type: str | None
    message: str | None
    traceback: str | None
    raw: dict[str, Any]


@attrs.frozen
class RunInfo:
    """One attempt (a run) of a task. ``available_at`` is when it became (or becomes)
    claimable, None while it waits for an event or a child without timeout;
    ``claimed_at`` is its latest claim (a run that slept is claimed again)."""

    run_id: UUID
    attempt: int
    state: TaskState
    worker_id: str | None
    wake_reason: str | None
    error: RunError | None
    created_at: datetime
    available_at: datetime | None
    claimed_at: datetime | None
    lease_expires_at: datetime | None
    finished_at: datetime | None


@attrs.frozen
class WaitingForEvent:
    """Suspended in ``ctx.await_event``: until `event_name` is emitted on `queue`, or
    `timeout_at` (None: no timeout). `step` is the wait's checkpoint name."""

    queue: str
    event_name: str
    step: str
    timeout_at: datetime | None


@attrs.frozen
class WaitingForChild:
    """Suspended in ``ctx.join`` until the child task `task_id` ends."""

    task_id: UUID
    step: str


@attrs.frozen
class WaitingForTime:
    """Not runnable before `wake_at`: a durable sleep (reason "sleep"), a retry's backoff
    ("retry"), or a delayed or scheduled start ("start")."""

    wake_at: datetime
    reason: Literal["sleep", "retry", "start"]


WaitingFor = WaitingForEvent | WaitingForChild | WaitingForTime


@attrs.frozen
class ChildSummary:
    task_id: UUID
    task_name: str
    state: TaskState


@attrs.frozen
class StepInfo:
    """One checkpoint of a task. `kind` is "step" for ``ctx.step`` and
    ``ctx.transaction``, else the library's kind ("spawn", "join", "sleep", "event",
    "emit", "now", "random", "uuid7"). `checkpoint` is the stored name and `name` the
    same without the library's ``$kind:`` prefix: a repeat keeps its number (``fetch#2``),
    which cannot be told from a name the code gave. `value` is the stored JSON;
    `attempt` is that of the run that wrote it (None once that run is gone)."""

    checkpoint: str
    kind: str
    name: str
    value: Any
    run_id: UUID
    attempt: int | None
    created_at: datetime


@attrs.frozen
class NameStats:
    """`QueueStats` for one task name on one queue."""

    queue: str
    task_name: str
    pending: int = 0
    sleeping: int = 0
    running: int = 0
    due_now: int = 0
    oldest_due_age: timedelta | None = None
    failed: int = 0
    cancelled: int = 0
    failed_attempts: int = 0
    unserved_runs: int = 0
    oldest_unserved_age: timedelta | None = None

    @property
    def unserved(self) -> bool:
        """Whether runs of this name are due for longer than ``unserved_after`` with no
        live worker of the queue registered for the name (see `QueueStats`)."""
        return self.unserved_runs > 0


@attrs.frozen
class QueueStats:
    """A queue's health (all queues when `queue` is None), for dashboards and alerts.

    Live counts are exact at `now` (the database's clock): ``pending`` (waiting for a
    worker, or for a retry's backoff or delayed start), ``sleeping`` (suspended),
    ``running``. ``due_now`` is how many runs could be claimed now and
    ``oldest_due_age`` how long the longest-waiting of them has been claimable: the lag
    to alert on. ``failed`` and ``cancelled`` count tasks that ended so in the last
    `window`, ``failed_attempts`` every failed attempt in it (retried ones included).
    Completed tasks are not counted: that would read every finished task.

    ``unserved_runs`` counts runs due for longer than `unserved_after` whose task name no
    live worker of their queue has registered (the workers registry), and
    ``oldest_unserved_age`` is how long the oldest of them has been due: work no worker will
    pick up until one that has the name starts: a typo in a spawned name, or a deploy
    that dropped a task. A
    `NameStats` with such runs is ``unserved``.
    """

    queue: str | None
    now: datetime
    window: timedelta
    pending: int
    sleeping: int
    running: int
    due_now: int
    oldest_due_age: timedelta | None
    failed: int
    cancelled: int
    failed_attempts: int
    unserved_after: timedelta
    unserved_runs: int
    oldest_unserved_age: timedelta | None
    by_name: list[NameStats]

    @property
    def counts(self) -> dict[TaskState, int]:
        """Live tasks by state, and those that failed or were cancelled in `window`."""
        return {
            TaskState.PENDING: self.pending,
            TaskState.SLEEPING: self.sleeping,
            TaskState.RUNNING: self.running,
            TaskState.FAILED: self.failed,
            TaskState.CANCELLED: self.cancelled,
        }


@attrs.frozen
class RetryResult:
    """What `Durable.retry` did: the task's new run and attempt, and how many of its
    descendants (cancelled when it ended) were given a new attempt with it."""

    task_id: UUID
    run_id: UUID
    attempt: int
    revived: int


# -- rows to values ---------------------------------------------------------------------


def summary(row: Row) -> TaskSummary:
    return TaskSummary(**{**row, "state": TaskState(row["state"])})


def run_info(row: Row) -> RunInfo:
    return RunInfo(**{**row, "state": TaskState(row["state"]), "error": run_error(row["error"])})


def run_error(error: Any) -> RunError | None:
    if error is None:
        return None
    kind, message, trace = inspection.error_fields(error)
    return RunError(kind, message, trace, error if isinstance(error, dict) else {"value": error})


def waiting_for(
    state: TaskState, last_run: RunInfo | None, wait: Row | None, now: datetime
) -> WaitingFor | None:
    """What keeps the task from running now, if anything but a free worker: its wait
    row while suspended on an event or a child, else the due time of its last run."""
    if state is TaskState.SLEEPING and wait is not None:
        child = inspection.child_of_event(wait["event_name"])
        if child is not None:
            return WaitingForChild(UUID(child), wait["step_name"])
        return WaitingForEvent(
            wait["queue"], wait["event_name"], wait["step_name"], wait["timeout_at"]
        )
    if last_run is None or last_run.available_at is None or last_run.available_at <= now:
        return None
    reason = inspection.time_wait_reason(state, last_run.wake_reason, last_run.attempt)
    if reason is None:
        return None
    return WaitingForTime(last_run.available_at, reason)  # type: ignore[arg-type]


def step_info(row: Row) -> StepInfo:
    kind, name = inspection.step_kind(row["name"])
    return StepInfo(
        checkpoint=row["name"],
        kind=kind,
        name=name,
        value=row["value"],
        run_id=row["run_id"],
        attempt=row["attempt"],
        created_at=row["created_at"],
    )


def queue_stats(
    queue: str | None,
    now: datetime,
    window: timedelta,
    live: Sequence[Row],
    ended: Sequence[Row],
    *,
    unserved_after: timedelta,
) -> QueueStats:
    """Merge the live and ended counts per (queue, task name) and total them."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in [*live, *ended]:
        key = (row["queue"], row["task_name"])
        merged.setdefault(key, {}).update(
            {k: v for k, v in row.items() if k not in ("queue", "task_name")}
        )
    by_name = [NameStats(q, name, **fields) for (q, name), fields in sorted(merged.items())]
    ages = [s.oldest_due_age for s in by_name if s.oldest_due_age is not None]
    unserved = [s.oldest_unserved_age for s in by_name if s.oldest_unserved_age is not None]
    return QueueStats(
        queue=queue,
        now=now,
        window=window,
        pending=sum(s.pending for s in by_name),
        sleeping=sum(s.sleeping for s in by_name),
        running=sum(s.running for s in by_name),
        due_now=sum(s.due_now for s in by_name),
        oldest_due_age=max(ages, default=None),
        failed=sum(s.failed for s in by_name),
        cancelled=sum(s.cancelled for s in by_name),
        failed_attempts=sum(s.failed_attempts for s in by_name),
        unserved_after=unserved_after,
        unserved_runs=sum(s.unserved_runs for s in by_name),
        oldest_unserved_age=max(unserved, default=None),
        by_name=by_name,
    )


def _not_retryable_hint(state: str) -> str:
    """What to do instead of retrying a task in `state`: cancelling works only on a task
    that has not ended, and a completed one cannot be started again."""
    if state == TaskState.COMPLETED:
        return "it succeeded and keeps its result: spawn a new task to run it again"
    return "wait for it to end, or cancel it first to start it over"


def retry_result(task_id: UUID, row: Row, max_attempts: int | None) -> RetryResult:
    """What retry_task did, or the error for why it wrote nothing."""
    outcome, state = row["outcome"], row["state"]
    if outcome == "missing":
        raise TaskNotFound(task_id)
    if outcome == "refused":
        raise RetryRefused(
            task_id,
            state,
            f"task {task_id} is {state}: only a failed or cancelled task can be retried "
            f"({_not_retryable_hint(state)})",
        )
    if outcome == "parent":
        raise RetryRefused(
            task_id,
            state,
            f"the parent of task {task_id} is {state}, so the child would be cancelled "
            "again: retry the parent, which retries the children cancelled with it",
        )
    if outcome == "max_attempts":
        raise InvalidInput(
            f"max_attempts must be more than the {row['attempt']} attempts task {task_id} "
            f"has made, got {max_attempts}"
        )
    return RetryResult(task_id, row["run_id"], row["attempt"], row["revived"])
