"""How `Worker.run_once` names what a run did, from what the worker saw and the stored row."""

from __future__ import annotations

from uuid import uuid4

import pytest

from durable_trio._core.report import PassReport, RunOutcome, RunReport, outcome_of


@pytest.mark.parametrize(
    ("suspended", "lost", "state", "retried", "expected"),
    [
        (False, False, "completed", False, RunOutcome.COMPLETED),
        (True, False, "sleeping", False, RunOutcome.SUSPENDED),
        (True, False, "pending", False, RunOutcome.SUSPENDED),  # woken again at once
        (False, False, "failed", True, RunOutcome.RETRYING),
        (False, False, "failed", False, RunOutcome.FAILED),
        (False, True, "cancelled", False, RunOutcome.CANCELLED),
        (False, True, "running", False, RunOutcome.ABANDONED),
        (False, True, "completed", False, RunOutcome.ABANDONED),  # taken over by another
        (False, False, None, False, RunOutcome.ABANDONED),
    ],
)
def test_outcome_of(
    suspended: bool, lost: bool, state: str | None, retried: bool, expected: RunOutcome
) -> None:
    assert outcome_of(suspended=suspended, lost=lost, state=state, retried=retried) is expected


def test_pass_report_lists_tasks_by_outcome() -> None:
    runs = tuple(
        RunReport(uuid4(), uuid4(), "t", 1, outcome) for outcome in RunOutcome for _ in range(2)
    )
    report = PassReport(runs)
    assert report.claimed == 2 * len(RunOutcome)
    for outcome, listed in [
        (RunOutcome.COMPLETED, report.completed),
        (RunOutcome.SUSPENDED, report.suspended),
        (RunOutcome.RETRYING, report.retrying),
        (RunOutcome.FAILED, report.failed),
        (RunOutcome.CANCELLED, report.cancelled),
        (RunOutcome.ABANDONED, report.abandoned),
    ]:
        assert listed == [r.task_id for r in runs if r.outcome is outcome]
    assert PassReport().claimed == 0
