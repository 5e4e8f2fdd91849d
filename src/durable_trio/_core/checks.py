"""Checks of plain values that many options share, with one wording for their errors."""

from __future__ import annotations

from .._errors import InvalidInput


def integer_in(value: object, what: str, low: int, high: int) -> int:
    """`value` if it is an int (not a bool) from `low` to `high`; else InvalidInput."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{what} must be an integer from {low} to {high}, got {value!r}")
    return value
