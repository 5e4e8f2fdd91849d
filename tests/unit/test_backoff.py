"""Pauses between tries of database I/O, and when to give up (the pure policy), and the
trio loop that follows it (`_retrying`), on trio's mock clock: no database, no waiting."""

from __future__ import annotations

import itertools
import math

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from durable_trio._core.backoff import BackoffPolicy, gives_up
from durable_trio._retrying import retrying

ALMOST_ONE = math.nextafter(1.0, 0.0)


def test_pauses_double_up_to_the_cap() -> None:
    policy = BackoffPolicy(first=0.05, cap=1.0, jitter=0.0)
    assert [policy.delay(n, 0.5) for n in range(1, 8)] == [
        0.05,
        0.1,
        0.2,
        0.4,
        0.8,
        1.0,
        1.0,
    ]


def test_jitter_takes_up_to_its_fraction_off() -> None:
    policy = BackoffPolicy(first=1.0, cap=1.0, jitter=0.25)
    assert policy.delay(1, 0.0) == 1.0
    assert policy.delay(1, 0.5) == 0.875
    assert policy.delay(1, ALMOST_ONE) == pytest.approx(0.75)


def test_countless_failures_do_not_overflow() -> None:
    assert BackoffPolicy(cap=2.0, jitter=0.0).delay(10_000, 0.0) == 2.0


@given(
    failures=st.integers(min_value=1, max_value=10_000),
    rand=st.floats(min_value=0.0, max_value=ALMOST_ONE),
)
def test_pauses_stay_between_the_jittered_first_and_the_cap(failures: int, rand: float) -> None:
    policy = BackoffPolicy(first=0.05, cap=1.0, jitter=0.25)
    assert 0.05 * 0.75 <= policy.delay(failures, rand) <= 1.0


def test_gives_up_when_the_retry_would_come_at_or_past_the_deadline() -> None:
    assert not gives_up(now=10.0, delay=0.5, deadline=None)
    assert not gives_up(now=10.0, delay=0.5, deadline=10.6)
    assert gives_up(now=10.0, delay=0.5, deadline=10.5)
    assert gives_up(now=11.0, delay=0.5, deadline=10.5)


class Flaky(Exception):
    pass


async def test_retrying_returns_once_the_call_succeeds(autojump_clock: trio.abc.Clock) -> None:
    calls: list[float] = []
    pauses: list[float] = []

    async def attempt() -> str:
        calls.append(trio.current_time())
        if len(calls) < 4:
            raise Flaky(len(calls))
        return "done"

    async def noted(ex: BaseException, pause: float) -> None:
        assert isinstance(ex, Flaky)
        pauses.append(pause)

    policy = BackoffPolicy(first=1.0, cap=3.0, jitter=0.0)
    assert await retrying(attempt, retry_on=(Flaky,), policy=policy, on_retry=noted) == "done"
    assert pauses == [1.0, 2.0, 3.0]
    assert [b - a for a, b in itertools.pairwise(calls)] == pytest.approx(pauses)


async def test_retrying_gives_up_at_the_deadline_with_the_last_error() -> None:
    tries = 0

    async def attempt() -> None:
        nonlocal tries
        tries += 1
        raise Flaky(tries)

    with pytest.raises(Flaky) as raised:
        # A deadline already passed: the first failure is the last.
        await retrying(attempt, retry_on=(Flaky,), deadline=lambda: 0.0)
    assert raised.value.args == (1,)
    assert tries == 1


async def test_other_errors_are_not_retried() -> None:
    async def attempt() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        await retrying(attempt, retry_on=(Flaky,))


async def test_the_pause_is_the_callers_sleep() -> None:
    slept: list[float] = []
    tries = 0

    async def attempt() -> int:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise Flaky()
        return tries

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    policy = BackoffPolicy(first=0.5, jitter=0.0)
    assert await retrying(attempt, retry_on=(Flaky,), policy=policy, sleep=sleep) == 2
    assert slept == [0.5]


async def test_cancelling_the_caller_stops_the_pause(autojump_clock: trio.abc.Clock) -> None:
    async def attempt() -> None:
        raise Flaky()

    policy = BackoffPolicy(first=100.0, cap=100.0, jitter=0.0)
    with trio.move_on_after(5) as scope:
        await retrying(attempt, retry_on=(Flaky,), policy=policy)
    assert scope.cancelled_caught
