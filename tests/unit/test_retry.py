"""Retry strategies, backoff delays and the decision taken when an attempt fails."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durable_trio import InvalidInput, RetryStrategy
from durable_trio._core.durations import MAX_SECONDS
from durable_trio._core.retry import FailureDecision, RetryKind, decide_failure, retry_delay

ALMOST_ONE = math.nextafter(1.0, 0.0)  # the largest rand a caller can pass


# -- delays ---------------------------------------------------------------------------


def test_none_never_waits() -> None:
    strategy = RetryStrategy.none()
    assert strategy.kind is RetryKind.NONE
    for attempt in range(1, 7):
        assert retry_delay(strategy, attempt, 0.0) == 0.0
        assert retry_delay(strategy, attempt, ALMOST_ONE) == 0.0


def test_fixed_waits_the_same_every_time() -> None:
    strategy = RetryStrategy.fixed(5)
    assert strategy.kind is RetryKind.FIXED
    assert (strategy.base, strategy.max_delay, strategy.jitter) == (5.0, 5.0, 0.0)
    assert [retry_delay(strategy, a, 0.7) for a in range(1, 7)] == [5.0] * 6


def test_fixed_accepts_a_timedelta() -> None:
    strategy = RetryStrategy.fixed(timedelta(minutes=2))
    assert retry_delay(strategy, 3, 0.0) == 120.0


def test_exponential_doubles_by_default() -> None:
    strategy = RetryStrategy.exponential(1.0, jitter=0.0)
    assert [retry_delay(strategy, a, 0.5) for a in range(1, 7)] == [1, 2, 4, 8, 16, 32]


def test_exponential_defaults() -> None:
    strategy = RetryStrategy.exponential()
    assert strategy.kind is RetryKind.EXPONENTIAL
    assert strategy.base == 1.0
    assert strategy.factor == 2.0
    assert strategy.max_delay == 3600.0
    assert strategy.jitter == 0.1


def test_exponential_with_factor_and_cap() -> None:
    strategy = RetryStrategy.exponential(10, factor=3, max_delay=100, jitter=0.0)
    assert [retry_delay(strategy, a, 0.0) for a in range(1, 7)] == [10, 30, 90, 100, 100, 100]


def test_exponential_accepts_timedeltas() -> None:
    strategy = RetryStrategy.exponential(
        timedelta(seconds=2), max_delay=timedelta(minutes=1), jitter=0
    )
    assert (strategy.base, strategy.max_delay) == (2.0, 60.0)
    assert [retry_delay(strategy, a, 0.0) for a in range(1, 7)] == [2, 4, 8, 16, 32, 60]


def test_cap_applies_even_when_base_exceeds_it() -> None:
    strategy = RetryStrategy.exponential(50, max_delay=10, jitter=0)
    assert retry_delay(strategy, 1, 0.0) == 10.0


def test_jitter_only_shortens_the_delay() -> None:
    strategy = RetryStrategy.exponential(1.0, jitter=0.5)
    # attempt 3: nominal 4 s; rand 0 gives the full delay, rand -> 1 gives half of it.
    assert retry_delay(strategy, 3, 0.0) == 4.0
    assert retry_delay(strategy, 3, 0.5) == 3.0
    assert 2.0 <= retry_delay(strategy, 3, ALMOST_ONE) < 2.0001


def test_jitter_with_fixed() -> None:
    strategy = RetryStrategy.fixed(10, jitter=0.2)
    assert retry_delay(strategy, 1, 0.0) == 10.0
    assert retry_delay(strategy, 1, 0.5) == pytest.approx(9.0)
    assert 8.0 <= retry_delay(strategy, 9, ALMOST_ONE) < 8.0001


def test_full_jitter_can_approach_zero_at_the_cap() -> None:
    strategy = RetryStrategy.exponential(1, max_delay=8, jitter=1.0)
    assert retry_delay(strategy, 10, 0.0) == 8.0
    assert 0.0 < retry_delay(strategy, 10, ALMOST_ONE) < 1e-9


@pytest.mark.parametrize("attempt", [1_025, 10**6, 10**18])
def test_huge_attempt_numbers_give_max_delay(attempt: int) -> None:
    # factor ** attempt overflows a float: the cap must still apply, not an exception.
    strategy = RetryStrategy.exponential(1.0, max_delay=600, jitter=0)
    assert retry_delay(strategy, attempt, 0.0) == 600.0
    jittered = RetryStrategy.exponential(1.0, max_delay=600, jitter=0.1)
    assert 540.0 <= retry_delay(jittered, attempt, ALMOST_ONE) < 540.0001


def test_integer_factor_overflow_gives_max_delay() -> None:
    # With an int factor, factor ** n is an exact (huge) int; base * it overflows on
    # conversion to float rather than in the power.
    strategy = RetryStrategy.exponential(1.5, factor=3, max_delay=60, jitter=0)
    assert retry_delay(strategy, 5_000, 0.0) == 60.0


def test_huge_base_does_not_produce_infinity() -> None:
    strategy = RetryStrategy.exponential(MAX_SECONDS, factor=100, max_delay=7, jitter=0)
    for attempt in (1, 3, 5, 1000):
        assert retry_delay(strategy, attempt, 0.0) == 7.0


def test_zero_base_stays_zero_even_when_the_power_overflows() -> None:
    strategy = RetryStrategy.exponential(0, jitter=0)
    assert retry_delay(strategy, 1, 0.0) == 0.0
    assert retry_delay(strategy, 50, 0.0) == 0.0
    assert retry_delay(strategy, 10**6, 0.0) == 0.0


strategies = st.one_of(
    st.just(RetryStrategy.none()),
    st.builds(
        RetryStrategy.fixed,
        st.floats(0, 1e6),
        jitter=st.floats(0, 1),
    ),
    st.builds(
        RetryStrategy.exponential,
        st.floats(0, 1e6),
        factor=st.floats(1, 100),
        max_delay=st.floats(0, 1e7),
        jitter=st.floats(0, 1),
    ),
)
rands = st.floats(0, 1, exclude_max=True)


@given(strategies, st.integers(1, 10**6), rands)
def test_delay_is_always_within_zero_and_max_delay(
    strategy: RetryStrategy, attempt: int, rand: float
) -> None:
    delay = retry_delay(strategy, attempt, rand)
    assert math.isfinite(delay)
    cap = 0.0 if strategy.kind is RetryKind.NONE else strategy.max_delay
    assert 0.0 <= delay <= cap


@given(strategies, st.integers(1, 2000), rands)
def test_jitter_bounds(strategy: RetryStrategy, attempt: int, rand: float) -> None:
    nominal = retry_delay(strategy, attempt, 0.0)
    delay = retry_delay(strategy, attempt, rand)
    assert nominal * (1 - strategy.jitter) <= delay * (1 + 1e-12)
    assert delay <= nominal


@given(strategies, st.integers(1, 2000))
def test_nominal_delay_never_decreases_with_attempts(strategy: RetryStrategy, attempt: int) -> None:
    assert retry_delay(strategy, attempt, 0.0) <= retry_delay(strategy, attempt + 1, 0.0)


@given(
    st.floats(1e-3, 1e3),
    st.floats(1, 10),
    st.floats(1, 1e6),
    st.integers(1, 60),
)
def test_exponential_formula(base: float, factor: float, cap: float, attempt: int) -> None:
    strategy = RetryStrategy.exponential(base, factor=factor, max_delay=cap, jitter=0)
    expected = min(base * factor ** (attempt - 1), cap)
    assert retry_delay(strategy, attempt, 0.3) == pytest.approx(expected)


# -- the decision after a failure -----------------------------------------------------


def test_non_retryable_fails_at_once() -> None:
    decision = decide_failure(
        attempt=1,
        max_attempts=10,
        retryable=False,
        strategy=RetryStrategy.exponential(),
        rand=0.0,
    )
    assert decision == FailureDecision(retry=False)
    assert decision.delay == 0.0


@pytest.mark.parametrize(("attempt", "max_attempts"), [(1, 1), (3, 3), (4, 3)])
def test_last_attempt_fails(attempt: int, max_attempts: int) -> None:
    decision = decide_failure(
        attempt=attempt,
        max_attempts=max_attempts,
        retryable=True,
        strategy=RetryStrategy.fixed(1),
        rand=0.0,
    )
    assert decision.retry is False


def test_retry_carries_the_strategy_delay() -> None:
    strategy = RetryStrategy.exponential(2, jitter=0.5)
    decision = decide_failure(
        attempt=3, max_attempts=5, retryable=True, strategy=strategy, rand=0.5
    )
    assert decision == FailureDecision(retry=True, delay=retry_delay(strategy, 3, 0.5))
    assert decision.delay == 6.0  # 2 * 2**2 = 8, shortened by 0.5 * 0.5 = 25%


def test_retry_delay_uses_the_failed_attempt_number() -> None:
    strategy = RetryStrategy.exponential(1, jitter=0)
    delays = [
        decide_failure(
            attempt=a, max_attempts=10, retryable=True, strategy=strategy, rand=0.0
        ).delay
        for a in range(1, 6)
    ]
    assert delays == [1, 2, 4, 8, 16]


@given(
    strategies,
    st.integers(1, 50),
    st.lists(st.tuples(st.booleans(), rands), min_size=60, max_size=60),
)
def test_simulated_failures_never_exceed_max_attempts(
    strategy: RetryStrategy, max_attempts: int, failures: list[tuple[bool, float]]
) -> None:
    """Every attempt fails; the task ends after max_attempts or the first non-retryable."""
    attempt = 1
    waited = 0.0
    for retryable, rand in failures:
        decision = decide_failure(
            attempt=attempt,
            max_attempts=max_attempts,
            retryable=retryable,
            strategy=strategy,
            rand=rand,
        )
        if not decision.retry:
            assert not retryable or attempt == max_attempts
            break
        assert decision.delay >= 0.0
        waited += decision.delay
        attempt += 1
        assert attempt <= max_attempts
    else:
        pytest.fail("a task failing every attempt must end within max_attempts")
    assert 1 <= attempt <= max_attempts
    first_refusal = next((i for i, (r, _) in enumerate(failures) if not r), len(failures))
    assert attempt == min(max_attempts, first_refusal + 1)
    assert math.isfinite(waited)


# -- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RetryStrategy.exponential(-1), "retry base delay must be zero or more"),
        (lambda: RetryStrategy.exponential(math.nan), "retry base delay must be a finite"),
        (lambda: RetryStrategy.exponential(math.inf), "retry base delay must be a finite"),
        (lambda: RetryStrategy.exponential("1"), "retry base delay must be a timedelta"),
        (lambda: RetryStrategy.exponential(True), "retry base delay must be a timedelta"),
        (lambda: RetryStrategy.exponential(timedelta(seconds=-1)), "retry base delay"),
        (lambda: RetryStrategy.exponential(1, max_delay=-5), "retry max_delay"),
        (lambda: RetryStrategy.exponential(1, max_delay=math.nan), "retry max_delay"),
        (lambda: RetryStrategy.exponential(1, factor=0.5), "retry factor must be between 1"),
        (lambda: RetryStrategy.exponential(1, factor=0), "retry factor"),
        (lambda: RetryStrategy.exponential(1, factor=101), "retry factor"),
        (lambda: RetryStrategy.exponential(1, factor=math.nan), "retry factor"),
        (lambda: RetryStrategy.exponential(1, factor=math.inf), "retry factor"),
        (lambda: RetryStrategy.exponential(1, factor="2"), "retry factor"),  # type: ignore[arg-type]
        (lambda: RetryStrategy.exponential(1, factor=True), "retry factor"),
        (lambda: RetryStrategy.exponential(1, jitter=1.1), "retry jitter must be between 0"),
        (lambda: RetryStrategy.exponential(1, jitter=-0.1), "retry jitter"),
        (lambda: RetryStrategy.exponential(1, jitter=math.nan), "retry jitter"),
        (lambda: RetryStrategy.exponential(1, jitter=True), "retry jitter"),
        (lambda: RetryStrategy.fixed(-1), "retry delay must be zero or more"),
        (lambda: RetryStrategy.fixed(math.nan), "retry delay must be a finite"),
        (lambda: RetryStrategy.fixed(None), "retry delay"),  # type: ignore[arg-type]
        (lambda: RetryStrategy.fixed(1, jitter=2), "retry jitter"),
    ],
)
def test_invalid_strategies_raise_invalid_input(build: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        build()


def test_invalid_input_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="retry factor"):
        RetryStrategy.exponential(1, factor=0.5)


def test_boundaries_are_accepted() -> None:
    assert RetryStrategy.exponential(0, factor=1, max_delay=0, jitter=0).factor == 1
    assert RetryStrategy.exponential(1, factor=100, jitter=1).jitter == 1
    assert RetryStrategy.fixed(0).base == 0.0


def test_strategies_are_frozen_values() -> None:
    assert RetryStrategy.exponential(2) == RetryStrategy.exponential(2)
    assert RetryStrategy.exponential(2) != RetryStrategy.exponential(3)
    assert hash(RetryStrategy.fixed(1)) == hash(RetryStrategy.fixed(1))
    strategy = RetryStrategy.none()
    with pytest.raises(AttributeError):
        strategy.base = 3.0  # type: ignore[misc]


# -- JSON -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy",
    [
        RetryStrategy.none(),
        RetryStrategy.fixed(7.5),
        RetryStrategy.fixed(timedelta(hours=1), jitter=0.25),
        RetryStrategy.exponential(),
        RetryStrategy.exponential(0.5, factor=1.5, max_delay=90, jitter=0),
    ],
)
def test_json_round_trip(strategy: RetryStrategy) -> None:
    data = strategy.to_json()
    assert set(data) == {"kind", "base", "factor", "max_delay", "jitter"}
    assert data["kind"] == strategy.kind.value
    through_text = json.loads(json.dumps(data))
    again = RetryStrategy.from_json(through_text)
    assert again == strategy
    for attempt in range(1, 7):
        assert retry_delay(again, attempt, 0.4) == retry_delay(strategy, attempt, 0.4)


@given(strategies)
def test_json_round_trip_property(strategy: RetryStrategy) -> None:
    assert RetryStrategy.from_json(json.loads(json.dumps(strategy.to_json()))) == strategy


def test_exact_json_shape() -> None:
    assert RetryStrategy.exponential(2, factor=3, max_delay=60, jitter=0.2).to_json() == {
        "kind": "exponential",
        "base": 2.0,
        "factor": 3,
        "max_delay": 60.0,
        "jitter": 0.2,
    }


def test_from_json_defaults_missing_fields() -> None:
    strategy = RetryStrategy.from_json({"kind": "fixed"})
    assert strategy == RetryStrategy(RetryKind.FIXED, base=0.0, factor=2.0, max_delay=3600.0)


def test_from_json_validates() -> None:
    with pytest.raises(ValueError, match="bogus"):
        RetryStrategy.from_json({"kind": "bogus"})
    with pytest.raises(InvalidInput, match="retry jitter"):
        RetryStrategy.from_json({"kind": "exponential", "jitter": 5})
    with pytest.raises(InvalidInput, match="retry base delay"):
        RetryStrategy.from_json({"kind": "fixed", "base": -1})
