"""Task and run states, and the one table of legal moves between them.

Everything that changes a state goes through `transition`; the SQL in sql/ guards the same
moves in its WHERE clauses, and tests/unit/test_states.py checks that the two agree.
"""

from __future__ import annotations

import enum


class TaskState(enum.StrEnum):
    PENDING = "pending"  # waiting for its first (or next) attempt to be claimed
    RUNNING = "running"  # an attempt is executing on a worker
    SLEEPING = "sleeping"  # suspended: timer, event or child join
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


class Event(enum.StrEnum):
    CLAIM = "claim"  # a worker took the run
    SUSPEND = "suspend"  # sleep_for / await_event / join on an unfinished child
    WAKE = "wake"  # timer due, event emitted, child finished
    COMPLETE = "complete"
    RETRY = "retry"  # attempt failed (error or lease expiry), attempts remain
    FAIL = "fail"  # attempt failed for good
    RELEASE = "release"  # graceful shutdown hands the run back, no attempt spent
    CANCEL = "cancel"


TERMINAL = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED})

_LIVE = {Event.CANCEL: TaskState.CANCELLED}

TRANSITIONS: dict[TaskState, dict[Event, TaskState]] = {
    TaskState.PENDING: {Event.CLAIM: TaskState.RUNNING, **_LIVE},
    TaskState.RUNNING: {
        Event.SUSPEND: TaskState.SLEEPING,
        Event.COMPLETE: TaskState.COMPLETED,
        Event.RETRY: TaskState.PENDING,
        Event.FAIL: TaskState.FAILED,
        Event.RELEASE: TaskState.PENDING,
        **_LIVE,
    },
    TaskState.SLEEPING: {Event.WAKE: TaskState.PENDING, Event.CLAIM: TaskState.RUNNING, **_LIVE},
    TaskState.COMPLETED: {},
    TaskState.FAILED: {},
    TaskState.CANCELLED: {},
}


class IllegalTransition(Exception):
    """A state change the table does not allow was attempted (a bug, never user error)."""


def transition(state: TaskState, event: Event) -> TaskState:
    """Return the state after `event`, or raise `IllegalTransition`."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(
            f"{event.value!r} is not allowed in state {state.value!r}"
        ) from None


def sources(event: Event) -> frozenset[TaskState]:
    """The states from which `event` is legal (what the SQL guards must list)."""
    return frozenset(s for s, moves in TRANSITIONS.items() if event in moves)
