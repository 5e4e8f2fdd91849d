"""Retention: what `Durable.cleanup` removes, and how its cut-offs are read."""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs

from ._core.checks import integer_in
from ._core.durations import to_seconds
from ._errors import InvalidInput

__all__ = ["CleanupResult", "cutoff"]

MAX_BATCH = 100_000


@attrs.frozen
class CleanupResult:
    """What one `Durable.cleanup` removed: finished tasks, and with them their runs and
    checkpoints; events (old ones, and children's end events whose parent finished)."""

    tasks: int = 0
    runs: int = 0
    checkpoints: int = 0
    events: int = 0

    def __add__(self, other: CleanupResult) -> CleanupResult:
        return CleanupResult(
            self.tasks + other.tasks,
            self.runs + other.runs,
            self.checkpoints + other.checkpoints,
            self.events + other.events,
        )

    def full(self, batch: int) -> bool:
        """Whether a batch removed as much as it may, so another may find more."""
        return batch in (self.tasks, self.events)


def cutoff(
    value: datetime | timedelta | float | None, *, what: str, now: datetime
) -> datetime | None:
    """A cut-off instant: an aware datetime as given, or an age (timedelta or seconds)
    before `now` (the database's clock)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidInput(f"{what} must be a timezone-aware datetime or an age, got {value!r}")
        return value
    return now - timedelta(seconds=to_seconds(value, what=what))


def check_duty(duty: object) -> float:
    if (
        isinstance(duty, bool)
        or not isinstance(duty, (int, float))
        or not 0 < duty <= 1  # NaN fails this too
    ):
        raise InvalidInput(f"duty must be a number above 0 and at most 1, got {duty!r}")
    return float(duty)


def rest_after(seconds: float, duty: float) -> float:
    """How long to rest after a batch that took `seconds`, so that batches take `duty` of
    the time: a cleanup beside busy workers leaves them most of the database's CPU."""
    return seconds * (1 - duty) / duty


def check_batch(batch: object) -> int:
    return integer_in(batch, "batch", 1, MAX_BATCH)
