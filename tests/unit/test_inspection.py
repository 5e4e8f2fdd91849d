"""Pure decisions of the inspection API (durable_trio._core.inspection)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from durable_trio import InvalidInput, TaskState
from durable_trio._core import inspection


@pytest.mark.parametrize(
    ("checkpoint", "expected"),
    [
        ("fetch", ("step", "fetch")),
        ("fetch#2", ("step", "fetch#2")),
        ("$spawn:kid", ("spawn", "kid")),
        ("$join:kid#2", ("join", "kid#2")),
        ("$uuid7:", ("uuid7", "")),
        ("$sleep:a:b", ("sleep", "a:b")),
        ("$odd", ("step", "$odd")),
    ],
)
def test_step_kind(checkpoint: str, expected: tuple[str, str]) -> None:
    assert inspection.step_kind(checkpoint) == expected


def test_child_of_event() -> None:
    assert inspection.child_of_event("$task:0190-abc") == "0190-abc"
    assert inspection.child_of_event("order-paid") is None


@pytest.mark.parametrize(
    ("state", "reason", "attempt", "expected"),
    [
        (TaskState.SLEEPING, "timer", 1, "sleep"),
        (TaskState.SLEEPING, "timeout", 1, None),  # an event wait's deadline: not a sleep
        (TaskState.PENDING, "retry", 2, "retry"),
        (TaskState.PENDING, None, 1, "start"),
        (TaskState.RUNNING, None, 1, None),
        (TaskState.FAILED, "retry", 3, None),
    ],
)
def test_time_wait_reason(
    state: TaskState, reason: str | None, attempt: int, expected: str | None
) -> None:
    assert inspection.time_wait_reason(state, reason, attempt) == expected


def test_list_query_per_state() -> None:
    assert inspection.list_query(None) == "list_tasks"
    assert inspection.list_query(TaskState.COMPLETED) == "list_tasks"
    for state in (TaskState.FAILED, TaskState.CANCELLED):
        assert inspection.list_query(state) == "list_tasks_ended"
    for state in (TaskState.PENDING, TaskState.SLEEPING, TaskState.RUNNING):
        assert inspection.list_query(state) == "list_tasks_live"


def test_validators() -> None:
    assert inspection.page_limit(1) == 1
    assert inspection.page_limit(1000) == 1000
    for bad in (0, 1001, 2.0, True, None):
        with pytest.raises(InvalidInput, match="limit"):
            inspection.page_limit(bad)
    assert inspection.task_state("failed") is TaskState.FAILED
    assert inspection.task_state(TaskState.PENDING) is TaskState.PENDING
    with pytest.raises(InvalidInput, match="one of pending, running"):
        inspection.task_state("FAILED")
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    assert inspection.aware(moment, what="x") is moment
    with pytest.raises(InvalidInput, match="x must be timezone-aware"):
        inspection.aware(datetime(2026, 1, 1), what="x")
    assert inspection.max_attempts(None) is None
    assert inspection.max_attempts(2) == 2
    for bad in (1, 0, "3", True):
        with pytest.raises(InvalidInput, match="max_attempts"):
            inspection.max_attempts(bad)


def test_error_fields() -> None:
    assert inspection.error_fields({"type": "E", "message": "m", "traceback": "t"}) == (
        "E",
        "m",
        "t",
    )
    assert inspection.error_fields({"type": "LeaseExpired"}) == ("LeaseExpired", None, None)
    assert inspection.error_fields("text") == (None, None, None)
