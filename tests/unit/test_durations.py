"""One bound for every duration and instant: MAX_DURATION, checked where a value enters."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import durable_trio as dt
from durable_trio._core.durations import (
    MAX_DURATION,
    MAX_SECONDS,
    check_instant,
    to_seconds,
)
from durable_trio._core.options import extend_seconds
from durable_trio._core.retry import retry_delay

NOW = datetime(2026, 12, 6, tzinfo=UTC)
OVER = [
    pytest.param(MAX_SECONDS + 1, id="just-over"),
    pytest.param(1e13, id="1e13"),
    pytest.param(10**400, id="int-beyond-float"),
    pytest.param(MAX_DURATION + timedelta(microseconds=1), id="timedelta-just-over"),
    pytest.param(timedelta.max, id="timedelta-max"),
]


def test_the_bound_is_public_and_about_a_century() -> None:
    assert dt.MAX_DURATION is MAX_DURATION
    assert timedelta(days=36_525) == MAX_DURATION
    assert MAX_SECONDS == 3_155_760_000.0


def test_the_bound_keeps_every_sum_inside_python_and_postgres() -> None:
    # The clock (real time plus at most MAX_DURATION of test offset), plus a delayed start,
    # plus a deadline counted from it, for the next few centuries of real time.
    latest = datetime(2500, 1, 1, tzinfo=UTC) + 3 * MAX_DURATION
    assert latest.year < 9999  # Python's datetime; Postgres' timestamptz goes to 294276


@pytest.mark.parametrize("value", [0, 1, 1.5, MAX_SECONDS, MAX_DURATION, timedelta(0)])
def test_within_the_bound(value: Any) -> None:
    expected = value.total_seconds() if isinstance(value, timedelta) else float(value)
    assert to_seconds(value, what="delay") == expected


@pytest.mark.parametrize("value", OVER)
def test_over_the_bound_names_the_option(value: Any) -> None:
    with pytest.raises(dt.InvalidInput, match=r"^claim_timeout must be at most 36525 days"):
        to_seconds(value, what="claim_timeout")


@given(st.floats(MAX_SECONDS, 1e300, exclude_min=True))
def test_every_float_over_the_bound_is_refused(seconds: float) -> None:
    with pytest.raises(dt.InvalidInput, match="at most"):
        to_seconds(seconds, what="delay")


# Every duration option refuses a value over the bound, naming itself.
OPTIONS: list[Any] = [
    pytest.param(lambda v: dt.RetryStrategy.fixed(v), "retry delay", id="retry-fixed"),
    pytest.param(lambda v: dt.RetryStrategy.exponential(v), "retry base delay", id="retry-base"),
    pytest.param(
        lambda v: dt.RetryStrategy.exponential(1, max_delay=v), "retry max_delay", id="retry-cap"
    ),
    pytest.param(lambda v: dt.SpawnOptions(delay=v), "delay", id="spawn-delay"),
    pytest.param(
        lambda v: dt.CancellationPolicy(max_pending_delay=v),
        "max_pending_delay",
        id="max-pending-delay",
    ),
    pytest.param(
        lambda v: dt.CancellationPolicy(max_duration=v), "max_duration", id="max-duration"
    ),
    pytest.param(lambda v: dt.WorkerOptions(claim_timeout=v), "claim_timeout", id="claim-timeout"),
    pytest.param(lambda v: dt.WorkerOptions(poll_interval=v), "poll_interval", id="poll-interval"),
    pytest.param(
        lambda v: dt.WorkerOptions(shutdown_grace=v), "shutdown_grace", id="shutdown-grace"
    ),
    pytest.param(lambda v: extend_seconds(v, 30.0), "extend_by", id="heartbeat-extend-by"),
]


@pytest.mark.parametrize(("make", "what"), OPTIONS)
@pytest.mark.parametrize("value", [1e13, timedelta.max])
def test_every_duration_option_is_bounded(
    make: Callable[[Any], Any], what: str, value: Any
) -> None:
    with pytest.raises(dt.InvalidInput) as info:
        make(value)
    assert str(info.value).startswith(f"{what} must be at most 36525 days")


@pytest.mark.parametrize(("make", "what"), OPTIONS)
def test_every_duration_option_takes_the_bound_itself(
    make: Callable[[Any], Any], what: str
) -> None:
    make(MAX_DURATION)


def test_instants_up_to_the_bound_ahead() -> None:
    assert check_instant(NOW + MAX_DURATION, what="start_at", now=NOW) == NOW + MAX_DURATION
    long_ago = datetime(1, 1, 1, tzinfo=UTC)  # in the past: due at once
    assert check_instant(long_ago, what="start_at", now=NOW) == long_ago
    east = NOW.astimezone(timezone(timedelta(hours=5))) + MAX_DURATION
    assert check_instant(east, what="start_at", now=NOW) == east


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (NOW + MAX_DURATION + timedelta(seconds=1), "start_at must be at most 36525 days"),
        (datetime.max.replace(tzinfo=UTC), "start_at must be at most 36525 days .* from now"),
        (datetime.max.replace(tzinfo=timezone(timedelta(hours=-5))), "start_at is out of range"),
        (datetime.min.replace(tzinfo=timezone(timedelta(hours=5))), "start_at is out of range"),
        (datetime(2030, 1, 1), "start_at must be a timezone-aware datetime"),
        ("2030-01-01", "start_at must be a timezone-aware datetime"),
    ],
)
def test_instants_refused(value: Any, message: str) -> None:
    with pytest.raises(dt.InvalidInput, match=message):
        check_instant(value, what="start_at", now=NOW)


def test_spawn_options_bound_start_at_from_now() -> None:
    soon = datetime.now(UTC) + MAX_DURATION - timedelta(days=1)
    assert dt.SpawnOptions(start_at=soon).start_at == soon
    with pytest.raises(dt.InvalidInput, match=r"start_at must be at most 36525 days .* from now"):
        dt.SpawnOptions(start_at=datetime.now(UTC) + MAX_DURATION + timedelta(days=1))


@pytest.mark.parametrize("base", [1e13, 1e300, 10**400])
def test_a_stored_strategy_over_the_bound_is_clamped(base: Any) -> None:
    # A row written with plain SQL, bypassing RetryStrategy: the worker that reads it
    # back (claim, reaper) must get a usable strategy, never an overflowing delay.
    strategy = dt.RetryStrategy.from_json({"kind": "fixed", "base": base, "max_delay": base})
    assert (strategy.base, strategy.max_delay) == (MAX_SECONDS, MAX_SECONDS)
    assert retry_delay(strategy, 1, 0.0) == MAX_SECONDS
    exponential = dt.RetryStrategy.from_json(
        {"kind": "exponential", "base": 1, "factor": 2, "max_delay": base}
    )
    assert retry_delay(exponential, 10**6, 0.0) == MAX_SECONDS
