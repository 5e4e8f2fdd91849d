"""Turning user-supplied durations into validated seconds."""

from __future__ import annotations

import math
from datetime import timedelta

from .._errors import InvalidInput

Duration = timedelta | float | int


def to_seconds(value: Duration, *, what: str, allow_zero: bool = True) -> float:
    """Seconds in `value`; ValueError (naming `what`) for negative, NaN or infinite input."""
    if isinstance(value, bool) or not isinstance(value, (timedelta, int, float)):
        raise InvalidInput(f"{what} must be a timedelta or a number of seconds, got {value!r}")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        raise InvalidInput(f"{what} must be a finite duration, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise InvalidInput(f"{what} must be {bound} seconds, got {value!r}")
    return seconds
