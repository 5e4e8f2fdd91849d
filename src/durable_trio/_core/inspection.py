"""Pure decisions of the inspection API: validating its filters, naming checkpoints for
display, and telling what a suspended task waits for."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .._errors import InvalidInput
from .checks import integer_in
from .names import RESERVED_PREFIX
from .states import TaskState

MAX_PAGE = 1000
CHILD_EVENT_PREFIX = f"{RESERVED_PREFIX}task:"

# How list_tasks finds tasks in a state: failed and cancelled ones through their last
# run (an index of ended runs, in task_id order), live ones through the live runs (the
# claim and lease indexes); a completed task through the tasks table, where it is the
# common case.
ENDED_STATES = frozenset({TaskState.FAILED, TaskState.CANCELLED})
LIVE_STATES = frozenset({TaskState.PENDING, TaskState.RUNNING, TaskState.SLEEPING})


def list_query(state: TaskState | None) -> str:
    """The named statement list_tasks runs for a state filter."""
    if state in ENDED_STATES:
        return "list_tasks_ended"
    if state in LIVE_STATES:
        return "list_tasks_live"
    return "list_tasks"


def page_limit(limit: object) -> int:
    return integer_in(limit, "limit", 1, MAX_PAGE)


def task_state(state: object) -> TaskState:
    """A TaskState, or its string value."""
    try:
        return TaskState(state)  # type: ignore[arg-type]  # anything else: ValueError
    except ValueError:
        allowed = ", ".join(s.value for s in TaskState)
        raise InvalidInput(
            f"state must be a TaskState or one of {allowed}; got {state!r}"
        ) from None


def aware(value: object, *, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidInput(f"{what} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(
            f"{what} must be timezone-aware (e.g. datetime.now(timezone.utc)), got {value!r}"
        )
    return value


def max_attempts(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise InvalidInput(
            f"max_attempts must be an integer greater than the attempts made so far, got {value!r}"
        )
    return value


def step_kind(checkpoint: str) -> tuple[str, str]:
    """(kind, name) of a checkpoint: ("step", name) for ctx.step and ctx.transaction;
    for the library's own checkpoints their kind ("spawn", "join", "sleep", "event",
    "emit", "now", "random", "uuid7") and the name the code gave (empty for helpers)."""
    if checkpoint.startswith(RESERVED_PREFIX) and ":" in checkpoint:
        kind, _, name = checkpoint[len(RESERVED_PREFIX) :].partition(":")
        return kind, name
    return "step", checkpoint


def child_of_event(event_name: str) -> str | None:
    """The child task id a join waits on, or None for a user event."""
    if event_name.startswith(CHILD_EVENT_PREFIX):
        return event_name[len(CHILD_EVENT_PREFIX) :]
    return None


def time_wait_reason(state: TaskState, wake_reason: str | None, attempt: int) -> str | None:
    """Why a task with a run not yet due waits for a time: "sleep" (ctx.sleep_for /
    sleep_until), "retry" (a backoff before the next attempt), "start" (a delayed or
    scheduled spawn); None when the run is not waiting for a time."""
    if state is TaskState.SLEEPING and wake_reason == "timer":
        return "sleep"
    if state is TaskState.PENDING:
        return "retry" if wake_reason == "retry" or attempt > 1 else "start"
    return None


def error_fields(error: Any) -> tuple[str | None, str | None, str | None]:
    """(type, message, traceback) of a stored error, whatever keys it lacks."""
    if not isinstance(error, dict):
        return None, None, None
    return (
        _text(error.get("type")),
        _text(error.get("message")),
        _text(error.get("traceback")),
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
