"""SpawnOptions, WorkerOptions and CancellationPolicy: defaults and every validation error."""

from __future__ import annotations

import math
import os
import socket
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from durable_trio import (
    CancellationPolicy,
    InvalidInput,
    RetryStrategy,
    SpawnOptions,
    WorkerOptions,
)
from durable_trio._core.durations import to_seconds
from durable_trio._core.options import (
    MAX_PRIORITY,
    as_timedelta,
    default_worker_id,
    extend_seconds,
    heartbeat_interval,
)

AWARE = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

# -- SpawnOptions ---------------------------------------------------------------------


def test_spawn_defaults() -> None:
    opts = SpawnOptions()
    assert opts.max_attempts == 5
    assert opts.retry == RetryStrategy.exponential(1.0)
    assert opts.retry.jitter == 0.1
    assert opts.retry.max_delay == 3600.0
    assert opts.headers == {}
    assert opts.queue is None
    assert opts.priority == 0
    assert opts.delay is None
    assert opts.start_at is None
    assert opts.idempotency_key is None
    assert opts.cancellation is None


def test_spawn_accepts_valid_values() -> None:
    policy = CancellationPolicy(max_duration=60)
    opts = SpawnOptions(
        max_attempts=10_000,
        retry=RetryStrategy.none(),
        headers={"trace": "abc", "n": [1, 2]},
        queue="emails",
        priority=-MAX_PRIORITY,
        delay=timedelta(minutes=1),
        idempotency_key="k" * 500,
        cancellation=policy,
    )
    assert opts.max_attempts == 10_000
    assert opts.queue == "emails"
    assert opts.priority == -MAX_PRIORITY
    assert opts.delay == 60.0
    assert opts.headers == {"trace": "abc", "n": [1, 2]}
    assert opts.cancellation is policy
    assert SpawnOptions(priority=MAX_PRIORITY).priority == MAX_PRIORITY
    assert SpawnOptions(max_attempts=1).max_attempts == 1
    assert SpawnOptions(delay=0).delay == 0.0
    assert SpawnOptions(idempotency_key="x").idempotency_key == "x"


def test_start_at_any_timezone() -> None:
    tz = timezone(timedelta(hours=-5))
    when = datetime(2030, 1, 1, 12, tzinfo=tz)
    assert SpawnOptions(start_at=when).start_at == when
    assert SpawnOptions(start_at=AWARE).start_at == AWARE


def test_headers_are_copied() -> None:
    source: dict[str, Any] = {"a": 1}
    opts = SpawnOptions(headers=source)
    source["b"] = 2
    assert opts.headers == {"a": 1}
    assert SpawnOptions(headers=None).headers == {}


def test_spawn_options_are_frozen() -> None:
    opts = SpawnOptions()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        opts.max_attempts = 3  # type: ignore[misc]
    assert attrs.evolve(opts, priority=5).priority == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be an integer from 1 to 10000, got 0"),
        ({"max_attempts": -1}, "max_attempts must be an integer from 1 to 10000, got -1"),
        ({"max_attempts": 10_001}, "max_attempts must be an integer from 1 to 10000"),
        ({"max_attempts": True}, "max_attempts must be an integer .* got True"),
        ({"max_attempts": 2.0}, "max_attempts must be an integer .* got 2.0"),
        ({"max_attempts": "3"}, "max_attempts must be an integer .* got '3'"),
        ({"max_attempts": None}, "max_attempts"),
        ({"retry": "exponential"}, "retry must be a RetryStrategy, got 'exponential'"),
        ({"retry": None}, "retry must be a RetryStrategy"),
        ({"headers": {1: "x"}}, "headers must be a mapping with string keys"),
        ({"headers": {"ok": 1, b"k": 2}}, "headers must be a mapping with string keys"),
        ({"headers": [("a", 1)]}, "headers must be a mapping"),
        ({"headers": "a=1"}, "headers must be a mapping"),
        ({"queue": "Bad Queue"}, "queue name 'Bad Queue' is invalid"),
        ({"queue": ""}, "queue name '' is invalid"),
        ({"queue": 3}, "queue name 3 is invalid"),
        ({"priority": MAX_PRIORITY + 1}, "priority must be an integer within \\+-1000000"),
        ({"priority": -MAX_PRIORITY - 1}, "priority must be an integer within"),
        ({"priority": 1.5}, "priority must be an integer"),
        ({"priority": True}, "priority must be an integer .* got True"),
        ({"priority": None}, "priority"),
        ({"delay": -1}, "delay must be zero or more seconds, got -1"),
        ({"delay": timedelta(seconds=-1)}, "delay must be zero or more seconds"),
        ({"delay": math.nan}, "delay must be a finite duration"),
        ({"delay": math.inf}, "delay must be a finite duration"),
        ({"delay": "5"}, "delay must be a timedelta or a number of seconds, got '5'"),
        ({"delay": True}, "delay must be a timedelta or a number of seconds"),
        ({"start_at": datetime(2030, 1, 1)}, "start_at must be a timezone-aware datetime"),
        ({"start_at": "2030-01-01T00:00:00Z"}, "start_at must be a timezone-aware datetime"),
        ({"start_at": 1_900_000_000}, "start_at must be a timezone-aware datetime"),
        ({"start_at": AWARE, "delay": 5}, "give either delay or start_at, not both"),
        ({"start_at": AWARE, "delay": 0}, "give either delay or start_at, not both"),
        ({"idempotency_key": ""}, "idempotency_key must be a string of 1-500 characters"),
        ({"idempotency_key": "k" * 501}, "idempotency_key must be a string of 1-500"),
        ({"idempotency_key": 42}, "idempotency_key must be a string .* got 42"),
        ({"idempotency_key": b"key"}, "idempotency_key must be a string"),
        ({"idempotency_key": "a\x00b"}, "idempotency_key must not contain NUL"),
        ({"idempotency_key": "schedule:x:2030"}, "reserved for the tasks of schedule slots"),
        ({"cancellation": {"max_duration": 5}}, "cancellation must be a CancellationPolicy"),
        ({"cancellation": 5}, "cancellation must be a CancellationPolicy"),
    ],
)
def test_spawn_options_reject(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        SpawnOptions(**kwargs)


def test_invalid_input_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        SpawnOptions(max_attempts=0)


# -- CancellationPolicy ---------------------------------------------------------------


def test_cancellation_defaults_and_json() -> None:
    policy = CancellationPolicy()
    assert policy.max_pending_delay is None
    assert policy.max_duration is None
    assert policy.to_json() == {"max_pending_delay": None, "max_duration": None}
    policy = CancellationPolicy(max_pending_delay=timedelta(minutes=5), max_duration=7.5)
    assert policy.to_json() == {"max_pending_delay": 300.0, "max_duration": 7.5}
    assert CancellationPolicy(max_duration=1e-6).max_duration == 1e-6  # the smallest stored


@pytest.mark.parametrize("field", ["max_pending_delay", "max_duration"])
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "must be more than zero seconds, got 0"),
        (timedelta(0), "must be more than zero seconds"),
        (-1, "must be more than zero seconds, got -1"),
        (1e-7, "must be at least one microsecond, got 1e-07"),
        (math.nan, "must be a finite duration"),
        (math.inf, "must be a finite duration"),
        ("10", "must be a timedelta or a number of seconds"),
        (False, "must be a timedelta or a number of seconds"),
    ],
)
def test_cancellation_rejects(field: str, value: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{field} {message}"):
        CancellationPolicy(**{field: value})


# -- WorkerOptions --------------------------------------------------------------------


def test_worker_defaults() -> None:
    opts = WorkerOptions()
    assert opts.concurrency == 8
    assert opts.claim_timeout == 30.0
    assert opts.batch_size is None
    assert opts.prefetch == 0
    assert opts.effective_batch == 8
    assert opts.poll_interval == 1.0
    assert opts.shutdown_grace == 10.0
    assert opts.queues is None
    assert opts.worker_id == f"{socket.gethostname()}:{os.getpid()}"
    assert opts.worker_id == default_worker_id()
    assert opts.heartbeat_interval == 10.0


def test_worker_accepts_valid_values() -> None:
    opts = WorkerOptions(
        concurrency=10_000,
        claim_timeout=timedelta(milliseconds=100),
        batch_size=3,
        poll_interval=timedelta(milliseconds=250),
        worker_id="w" * 200,
        shutdown_grace=0,
        queues=["a", "b_2"],
    )
    assert opts.claim_timeout == pytest.approx(0.1)
    assert opts.poll_interval == 0.25
    assert opts.shutdown_grace == 0.0
    assert opts.queues == ("a", "b_2")
    assert opts.effective_batch == 3
    assert WorkerOptions(queues=("x",)).queues == ("x",)
    assert WorkerOptions(queues=iter(["y"])).queues == ("y",)
    assert WorkerOptions(concurrency=1).concurrency == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "concurrency must be an integer from 1 to 10000, got 0"),
        ({"concurrency": -3}, "concurrency must be an integer from 1 to 10000"),
        ({"concurrency": 10_001}, "concurrency must be an integer from 1 to 10000"),
        ({"concurrency": True}, "concurrency must be an integer .* got True"),
        ({"concurrency": 4.0}, "concurrency must be an integer"),
        ({"concurrency": None}, "concurrency"),
        ({"claim_timeout": 0.09}, "claim_timeout must be at least 0.1 seconds, got 0.09"),
        ({"claim_timeout": timedelta(milliseconds=50)}, "claim_timeout must be at least 0.1"),
        ({"claim_timeout": 0}, "claim_timeout must be more than zero seconds"),
        ({"claim_timeout": -30}, "claim_timeout must be more than zero seconds"),
        ({"claim_timeout": math.nan}, "claim_timeout must be a finite duration"),
        ({"claim_timeout": math.inf}, "claim_timeout must be a finite duration"),
        ({"claim_timeout": "30"}, "claim_timeout must be a timedelta or a number"),
        ({"prefetch": -1}, "prefetch must be an integer from 0 to 10000, got -1"),
        ({"prefetch": 10_001}, "prefetch must be an integer from 0 to 10000"),
        ({"prefetch": True}, "prefetch must be an integer .* got True"),
        ({"prefetch": 2.0}, "prefetch must be an integer"),
        ({"prefetch": None}, "prefetch"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": -1}, "batch_size must be a positive integer"),
        ({"batch_size": True}, "batch_size must be a positive integer, got True"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"poll_interval": 0}, "poll_interval must be more than zero seconds"),
        ({"poll_interval": -1}, "poll_interval must be more than zero seconds"),
        ({"poll_interval": math.nan}, "poll_interval must be a finite duration"),
        ({"shutdown_grace": -1}, "shutdown_grace must be zero or more seconds"),
        ({"shutdown_grace": math.inf}, "shutdown_grace must be a finite duration"),
        ({"worker_id": ""}, "worker_id must be a string of 1-200 characters, got ''"),
        ({"worker_id": "w" * 201}, "worker_id must be a string of 1-200 characters"),
        ({"worker_id": 7}, "worker_id must be a string of 1-200 characters, got 7"),
        ({"worker_id": None}, "worker_id must be a string"),
        ({"worker_id": "bad\x00id"}, "worker_id must not contain control characters"),
        ({"worker_id": "line\nbreak"}, "worker_id must not contain control characters"),
        ({"queues": "default"}, "queues must be a list of queue names, got the string"),
        ({"queues": ["ok", "Not OK"]}, "queue name 'Not OK' is invalid"),
        ({"queues": [None]}, "queue name None is invalid"),
    ],
)
def test_worker_options_reject(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        WorkerOptions(**kwargs)


@pytest.mark.parametrize(
    ("claim_timeout", "expected"),
    [(30, 10.0), (0.3, 0.1), (timedelta(minutes=1), 20.0), (45.0, 15.0)],
)
def test_heartbeat_interval_is_a_third_of_the_lease(
    claim_timeout: float | timedelta, expected: float
) -> None:
    opts = WorkerOptions(claim_timeout=claim_timeout)
    assert opts.heartbeat_interval == pytest.approx(expected)
    assert heartbeat_interval(opts.claim_timeout) == opts.heartbeat_interval


@given(st.floats(0.1, 1e6))
def test_heartbeat_renews_well_before_expiry(claim_timeout: float) -> None:
    interval = WorkerOptions(claim_timeout=claim_timeout).heartbeat_interval
    assert 0 < interval < claim_timeout
    # Missing one beat still leaves time for the next one before the lease expires.
    assert 2 * interval < claim_timeout


@pytest.mark.parametrize(
    ("concurrency", "batch_size", "expected"),
    [(8, None, 8), (8, 3, 3), (2, 10, 10), (1, None, 1)],
)
def test_effective_batch(concurrency: int, batch_size: int | None, expected: int) -> None:
    opts = WorkerOptions(concurrency=concurrency, batch_size=batch_size)
    assert opts.effective_batch == expected


def test_a_claim_fills_the_slots_and_the_prefetch() -> None:
    assert WorkerOptions(concurrency=1, prefetch=4).effective_batch == 5
    assert WorkerOptions(concurrency=1, prefetch=4, batch_size=2).effective_batch == 2
    assert WorkerOptions(prefetch=10_000).prefetch == 10_000


# -- lease extension and helpers ------------------------------------------------------


def test_extend_seconds() -> None:
    assert extend_seconds(None, 30.0) == 30.0
    assert extend_seconds(120, 30.0) == 120.0
    assert extend_seconds(timedelta(minutes=5), 30.0) == 300.0
    # Never shorter than a normal lease: extending must not shorten the lease.
    assert extend_seconds(5, 30.0) == 30.0
    assert extend_seconds(timedelta(seconds=1), 30.0) == 30.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "extend_by must be more than zero seconds"),
        (-5, "extend_by must be more than zero seconds"),
        (math.nan, "extend_by must be a finite duration"),
        (math.inf, "extend_by must be a finite duration"),
        ("60", "extend_by must be a timedelta or a number of seconds"),
    ],
)
def test_extend_seconds_rejects(value: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        extend_seconds(value, 30.0)


@given(st.one_of(st.none(), st.floats(1e-3, 1e7)), st.floats(0.1, 1e6))
def test_extend_is_at_least_the_claim_timeout(
    extend_by: float | None, claim_timeout: float
) -> None:
    result = extend_seconds(extend_by, claim_timeout)
    assert result >= claim_timeout
    if extend_by is not None:
        assert result >= extend_by


def test_as_timedelta() -> None:
    assert as_timedelta(1.5) == timedelta(seconds=1.5)
    assert as_timedelta(0.0) == timedelta(0)
    assert as_timedelta(math.inf) == timedelta.max


def test_to_seconds() -> None:
    assert to_seconds(timedelta(days=1, milliseconds=5), what="x") == 86400.005
    assert to_seconds(3, what="x") == 3.0
    assert isinstance(to_seconds(3, what="x"), float)
    assert to_seconds(0, what="x") == 0.0
    with pytest.raises(InvalidInput, match=r"^wait must be more than zero seconds, got 0$"):
        to_seconds(0, what="wait", allow_zero=False)
    with pytest.raises(InvalidInput, match=r"^wait must be zero or more seconds, got -0\.5$"):
        to_seconds(-0.5, what="wait")
