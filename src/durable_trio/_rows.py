"""The rows the store hands back, typed: one frozen class per kind of answer, built from
the executor's dict row by `Store` (by column name, or by `from_row` where a column needs
reading); nothing here talks to a database.

Columns that the worker decodes itself (a claimed run's headers, retry strategy and
checkpoints, as JSON text) stay text here: a value no version of the library wrote must
fail where the worker can fail that run's task, not inside the claim.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import attrs

from ._core.schedules import MissedPolicy, validate_missed

__all__ = ["ClaimedRun", "DueSchedule", "ExpiredRun", "ScheduleInfo", "StoredOutcome"]

# What the executors return: one dict per row, by column name.
_Row = dict[str, Any]


@attrs.frozen
class ClaimedRun:
    """A run a claim leased to this worker (see sql/functions/claim_runs.sql)."""

    run_id: UUID
    task_id: UUID
    task_name: str
    attempt: int
    params: Any  # the task's params as stored (JSON), structured by the worker
    headers: str
    retry: str
    max_attempts: int
    checkpoints: str
    lease_expires_at: datetime
    claimed_at: datetime


@attrs.frozen
class ExpiredRun:
    """A running run whose lease expired: the reaper fails it (retry as the task says)."""

    run_id: UUID
    task_id: UUID
    attempt: int
    max_attempts: int
    retry: str
    task_name: str
    queue: str


@attrs.frozen
class StoredOutcome:
    """How a run stands now: its state, its error (JSON), and whether its failure
    scheduled another attempt."""

    state: str
    error: Any
    retried: bool


@attrs.frozen
class DueSchedule:
    """A schedule due now, as a worker's pass reads it, with the database's `now`."""

    schedule_id: str
    cron: str
    timezone: str
    missed: str
    next_fire_at: datetime
    updated_at: datetime
    now: datetime


@attrs.frozen
class ScheduleInfo:
    """A snapshot of one schedule. ``next_fire_at`` is the next slot it will spawn (None
    while paused: resuming starts from the first slot after the resume);
    ``last_fired_at`` is the latest slot it spawned and ``last_task_id`` that task."""

    schedule_id: str
    task_name: str
    queue: str
    cron: str
    timezone: str
    missed: MissedPolicy
    paused: bool
    next_fire_at: datetime | None
    last_fired_at: datetime | None
    last_task_id: UUID | None
    params: Any
    headers: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: _Row) -> ScheduleInfo:
        values = dict(row)
        if values["paused"]:
            values["next_fire_at"] = None
        values["missed"] = validate_missed(values["missed"])
        return cls(**values)
