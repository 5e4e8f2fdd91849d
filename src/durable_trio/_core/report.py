"""What one pass of `Worker.run_once` did: a typed summary of each run it claimed."""

from __future__ import annotations

import enum
from typing import Any, overload
from uuid import UUID

import attrs

__all__ = ["PassReport", "RunOutcome", "RunReport", "outcome_of"]


class RunOutcome(enum.StrEnum):
    """How a claimed run ended in a pass."""

    COMPLETED = "completed"  # the task returned; its result is stored
    SUSPENDED = "suspended"  # sleeping, waiting for an event or joining a child
    RETRYING = "retrying"  # the attempt failed; the next one is scheduled
    FAILED = "failed"  # the attempt failed and the task failed for good
    CANCELLED = "cancelled"  # the task was cancelled while the run was executing
    ABANDONED = "abandoned"  # the lease was lost: the run is retried once it expires


def outcome_of(*, suspended: bool, lost: bool, state: str | None, retried: bool) -> RunOutcome:
    """A run's outcome, from what the worker saw (`suspended`, `lost`) and the run's
    stored `state` afterwards (None: the row is gone) and whether a next attempt exists."""
    if suspended:  # the row may already be pending again (woken at once): still a suspension
        return RunOutcome.SUSPENDED
    if state == "cancelled":
        return RunOutcome.CANCELLED
    if lost:
        return RunOutcome.ABANDONED
    if state == "completed":
        return RunOutcome.COMPLETED
    if state == "failed":
        return RunOutcome.RETRYING if retried else RunOutcome.FAILED
    return RunOutcome.ABANDONED


@attrs.frozen
class RunReport:
    """One run a pass claimed. ``error`` is the stored error of a failed attempt
    (``{"type", "message", "traceback", ...}``), else None."""

    task_id: UUID
    run_id: UUID
    task_name: str
    attempt: int
    outcome: RunOutcome
    error: dict[str, Any] | None = None


class _Tasks:
    """A `PassReport` attribute: the ids of the tasks whose run ended with `outcome`."""

    def __init__(self, outcome: RunOutcome, doc: str) -> None:
        self.outcome = outcome
        self.__doc__ = doc

    @overload
    def __get__(self, report: None, owner: type[PassReport]) -> _Tasks: ...
    @overload
    def __get__(self, report: PassReport, owner: type[PassReport]) -> list[UUID]: ...
    def __get__(self, report: PassReport | None, owner: type[PassReport]) -> _Tasks | list[UUID]:
        return self if report is None else report.task_ids(self.outcome)


@attrs.frozen
class PassReport:
    """What `Worker.run_once` did, in claim order. Empty when nothing was due."""

    runs: tuple[RunReport, ...] = ()

    @property
    def claimed(self) -> int:
        return len(self.runs)

    def task_ids(self, outcome: RunOutcome) -> list[UUID]:
        return [run.task_id for run in self.runs if run.outcome is outcome]

    completed = _Tasks(RunOutcome.COMPLETED, "Tasks whose run returned (their result is stored).")
    suspended = _Tasks(
        RunOutcome.SUSPENDED, "Tasks that slept, waited for an event or joined an unfinished child."
    )
    retrying = _Tasks(
        RunOutcome.RETRYING,
        "Tasks whose attempt failed with attempts left: the next one is scheduled.",
    )
    failed = _Tasks(RunOutcome.FAILED, "Tasks that failed for good.")
    cancelled = _Tasks(RunOutcome.CANCELLED, "Tasks cancelled while their run was executing.")
    abandoned = _Tasks(
        RunOutcome.ABANDONED, "Tasks whose run lost its lease (retried once the lease expires)."
    )
