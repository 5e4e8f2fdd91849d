"""How a failure is written down: stored error records that can always be built and
stored, whatever the exception does, and the record of a task the engine could not
process because of its stored data.

Every function here returns text or a record and never raises for a hostile exception
(``__str__``/``__repr__`` raising, enormous or cyclic chains, deep groups, odd
``__notes__``): the worker records the failure instead of losing it.
"""

from __future__ import annotations

import traceback
from typing import Any

__all__ = [
    "MESSAGE_LIMIT",
    "TRACEBACK_LIMIT",
    "database_error",
    "error_record",
    "printable",
    "summary",
    "type_name",
    "unprocessable",
]

# Stored sizes (characters) of an error's message and traceback: longer ones keep their
# beginning and end around a "..." line (docs/reliability.md).
MESSAGE_LIMIT = 10_000
TRACEBACK_LIMIT = 20_000
# How deep a message follows exception groups nested in groups (the traceback has its
# own bound, traceback.format_exception's max_group_depth).
_GROUP_DEPTH = 5
UNPROCESSABLE = "durable_trio.UnprocessableTask"
NO_TRACEBACK = "(the traceback could not be formatted)"


def printable(text: str, limit: int) -> str:
    """Error text that can always be stored: bounded, no NUL, valid UTF-8."""
    if len(text) > limit:
        text = text[: limit // 2] + "\n...\n" + text[-limit // 2 :]
    return text.replace("\x00", "\\0").encode("utf-8", "backslashreplace").decode("utf-8")


def type_name(ex: BaseException) -> str:
    cls = type(ex)
    try:
        return f"{cls.__module__}.{cls.__qualname__}"
    except Exception:  # noqa: BLE001 - a class whose names are not strings
        return object.__repr__(cls)


def _safe_str(ex: BaseException) -> str:
    """str(ex), or a note saying why there is none (its __str__ raised)."""
    try:
        return str(ex)
    except Exception as failure:  # noqa: BLE001 - any __str__ may raise anything
        try:
            shown = repr(ex)
        except Exception:  # noqa: BLE001 - and __repr__ too
            shown = object.__repr__(ex)
        return f"<str() of {shown} raised {type(failure).__name__}>"


def message(ex: BaseException, depth: int = 0) -> str:
    """An error's message; for a group (from a nursery in the task), each one's too."""
    if not isinstance(ex, BaseExceptionGroup):
        return _safe_str(ex)
    if depth >= _GROUP_DEPTH:
        return f"{_safe_str(ex)} (nested groups not shown)"
    try:
        inner = "; ".join(f"{type(e).__name__}: {message(e, depth + 1)}" for e in ex.exceptions)
        return f"{ex.message}: {inner}"
    except Exception:  # noqa: BLE001 - a group subclass with odd attributes
        return _safe_str(ex)


def summary(ex: BaseException) -> str:
    """``Type: message``, bounded: for log lines (%r of a hostile error may raise)."""
    return printable(f"{type(ex).__name__}: {message(ex)}", MESSAGE_LIMIT)


def traceback_text(ex: BaseException) -> str | None:
    """The formatted traceback (cycles and groups handled by the traceback module), or
    None if even that failed (say, ``__notes__`` that is not a list)."""
    try:
        return "".join(traceback.format_exception(ex))
    except Exception:  # noqa: BLE001 - a hostile exception broke the formatter
        return None


def error_record(ex: BaseException, *, retryable: bool, attempt: int) -> dict[str, Any]:
    """The stored error of a failed attempt."""
    text = traceback_text(ex)
    return {
        "type": type_name(ex),
        "message": printable(message(ex), MESSAGE_LIMIT),
        "traceback": printable(text or NO_TRACEBACK, TRACEBACK_LIMIT),
        "retryable": retryable,
        "attempt": attempt,
    }


def database_error(ex: BaseException) -> str:
    """What a database error says, for a stored error or a log line."""
    diag = getattr(ex, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return f"{type(ex).__name__}: {primary or message(ex)}"


def unprocessable(
    why: str, *, stage: str, attempt: int | None, cause: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The stored error of a task failed because its stored data broke the engine's
    processing of it at `stage` (claim, heartbeat, record, retry, reap): not retried,
    since the same data would break it again. `cause` is the attempt's own error, if
    there was one (a failure whose retry could not be scheduled)."""
    record: dict[str, Any] = {
        "type": UNPROCESSABLE,
        "message": printable(why, MESSAGE_LIMIT),
        "stage": stage,
        "retryable": False,
        "attempt": attempt,
    }
    if cause is not None:
        record["cause"] = cause
    return record
