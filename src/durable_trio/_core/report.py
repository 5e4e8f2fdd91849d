"""What one pass of `Worker.run_once` did: a typed summary of each run it claimed."""

from __future__ import annotations

import enum
from typing import Any
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


@attrs.frozen
class PassReport:
    """What `Worker.run_once` did, in claim order. Empty when nothing was due."""

    runs: tuple[RunReport, ...] = ()

    @property
    def claimed(self) -> int:
        return len(self.runs)

    def task_ids(self, outcome: RunOutcome) -> list[UUID]:
        return [run.task_id for run in self.runs if run.outcome is outcome]

    @property
    def completed(self) -> list[UUID]:
        """Tasks whose run returned (their result is stored)."""
        return self.task_ids(RunOutcome.COMPLETED)

    @property
    def suspended(self) -> list[UUID]:
        """Tasks that slept, waited for an event or joined an unfinished child."""
        return self.task_ids(RunOutcome.SUSPENDED)

    @property
    def retrying(self) -> list[UUID]:
        """Tasks whose attempt failed with attempts left: the next one is scheduled."""
        return self.task_ids(RunOutcome.RETRYING)

    @property
    def failed(self) -> list[UUID]:
        """Tasks that failed for good."""
        return self.task_ids(RunOutcome.FAILED)

    @property
    def cancelled(self) -> list[UUID]:
        return self.task_ids(RunOutcome.CANCELLED)

    @property
    def abandoned(self) -> list[UUID]:
        """Tasks whose run lost its lease (retried once the lease expires)."""
        return self.task_ids(RunOutcome.ABANDONED)
