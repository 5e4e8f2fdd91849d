"""Stored error records: built whatever the exception does, bounded in size."""

from __future__ import annotations

from durable_trio._failures import (
    MESSAGE_LIMIT,
    NO_TRACEBACK,
    error_record,
    summary,
    unprocessable,
)


class Hostile(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str")

    def __repr__(self) -> str:
        raise RuntimeError("repr")


def test_a_hostile_exception_still_gives_a_record() -> None:
    record = error_record(Hostile(), retryable=True, attempt=2)
    assert record["type"].endswith("Hostile")
    assert "raised RuntimeError" in record["message"]
    assert record["traceback"] != NO_TRACEBACK
    assert (record["retryable"], record["attempt"]) == (True, 2)
    assert "raised RuntimeError" in summary(Hostile())


def test_an_enormous_message_keeps_its_ends() -> None:
    record = error_record(ValueError("a" + "x" * 100_000 + "z"), retryable=False, attempt=1)
    assert len(record["message"]) == MESSAGE_LIMIT + len("\n...\n")
    assert record["message"].startswith("ax")
    assert record["message"].endswith("xz")


def test_deep_groups_are_cut() -> None:
    ex: Exception = ValueError("bottom")
    for level in range(50):
        ex = ExceptionGroup(f"level {level}", [ex])
    record = error_record(ex, retryable=True, attempt=1)
    assert record["message"].startswith("level 49: ExceptionGroup: level 48")
    assert "not shown" in record["message"]
    assert "bottom" not in record["message"]


def test_unprocessable_names_its_stage_and_cause() -> None:
    cause = {"type": "LeaseExpired"}
    record = unprocessable("why \x00", stage="reap", attempt=3, cause=cause)
    assert record == {
        "type": "durable_trio.UnprocessableTask",
        "message": "why \\0",
        "stage": "reap",
        "retryable": False,
        "attempt": 3,
        "cause": cause,
    }
