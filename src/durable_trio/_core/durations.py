"""Turning user-supplied durations and instants into validated values.

Every duration durable_trio accepts (retry delays, spawn delays, worker timeouts, durable
sleeps, event timeouts, lease extensions, cancellation deadlines, the test clock's offset)
is at most `MAX_DURATION`, and every instant it accepts (``start_at``, ``sleep_until``) at
most that far ahead. Why one bound: the database adds these to its clock, and Python
reads the sums back as datetimes. With the clock (real time plus at most `MAX_DURATION`
of test offset) plus one allowed duration plus another (a deadline counted from a
delayed start), everything stays centuries inside both Postgres' timestamptz (year
294276) and Python's datetime (year 9999), so no sum can overflow. The SQL functions that
add stored durations to the clock clamp them to the same bound (``bounded_add``), for rows
written around this check.
"""

from __future__ import annotations

import math
import typing
from datetime import UTC, datetime, timedelta

from .._errors import InvalidInput

Duration = timedelta | float | int

MAX_DURATION = timedelta(days=36_525)
"""The longest duration (100 years of 365.25 days) accepted anywhere."""
MAX_SECONDS = MAX_DURATION.total_seconds()
_MAX_TEXT = f"{MAX_DURATION.days} days ({MAX_SECONDS:.0f} seconds, about 100 years)"


def to_seconds(value: Duration, *, what: str, allow_zero: bool = True) -> float:
    """Seconds in `value`; `InvalidInput` (naming `what`) for negative, NaN, infinite or
    longer than `MAX_DURATION`, and unless `allow_zero`, for what rounds to zero
    microseconds."""
    if isinstance(value, bool) or not isinstance(value, (timedelta, int, float)):
        raise InvalidInput(
            f"{what} must be a timedelta or a number of seconds, got {_shown(value)}"
        )
    try:
        seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    except OverflowError:  # an int too large for a float
        seconds = MAX_SECONDS * 2 if typing.cast(int, value) > 0 else -1.0
    if math.isnan(seconds) or math.isinf(seconds):
        raise InvalidInput(f"{what} must be a finite duration, got {_shown(value)}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise InvalidInput(f"{what} must be {bound} seconds, got {_shown(value)}")
    if seconds > MAX_SECONDS:
        raise InvalidInput(f"{what} must be at most {_MAX_TEXT}, got {_shown(value)}")
    if not allow_zero and timedelta(seconds=seconds) == timedelta(0):
        # The database keeps microseconds: it would store zero, which is refused.
        raise InvalidInput(f"{what} must be at least one microsecond, got {_shown(value)}")
    return seconds


def _shown(value: object) -> str:
    """A bounded repr for messages (a huge int's repr is huge, or even refused)."""
    try:
        text = repr(value)
    except ValueError:  # int repr beyond sys.get_int_max_str_digits()
        return f"an int of about {value.bit_length() * 0.30103:.0f} digits"  # type: ignore[attr-defined]
    return text if len(text) <= 80 else text[:77] + "..."


def check_instant(value: object, *, what: str, now: datetime) -> datetime:
    """A timezone-aware datetime at most `MAX_DURATION` after `now` (earlier is fine: it
    is due at once); `InvalidInput` naming `what` otherwise."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"{what} must be a timezone-aware datetime, got {_shown(value)}")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:  # datetime.min or .max with an offset: beyond any calendar
        raise InvalidInput(f"{what} is out of range, got {value!r}") from None
    if utc - now > MAX_DURATION:
        raise InvalidInput(
            f"{what} must be at most {_MAX_TEXT} from now ({now:%Y-%m-%d}), got {value!r}"
        )
    return value


def interval(seconds: float | None) -> timedelta | None:
    """Seconds as the timedelta a SQL ``interval`` parameter takes (None stays None)."""
    return None if seconds is None else timedelta(seconds=seconds)
