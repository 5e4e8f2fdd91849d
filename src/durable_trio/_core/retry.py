"""Retry strategies and the decision taken when an attempt fails."""

from __future__ import annotations

import enum
from typing import Any

import attrs

from .._errors import InvalidInput
from .durations import MAX_SECONDS, Duration, to_seconds


class RetryKind(enum.StrEnum):
    NONE = "none"
    FIXED = "fixed"
    EXPONENTIAL = "exponential"


def _kind(value: Any) -> RetryKind:
    try:
        return RetryKind(value)
    except ValueError:
        accepted = ", ".join(k.value for k in RetryKind)
        raise InvalidInput(f"retry kind {value!r} is unknown: use one of {accepted}") from None


def _base_seconds(value: Duration) -> float:
    return to_seconds(value, what="retry base delay")


def _max_delay_seconds(value: Duration) -> float:
    return to_seconds(value, what="retry max_delay")


@attrs.frozen
class RetryStrategy:
    """How long to wait before the next attempt after a failure.

    Build one with `RetryStrategy.none()`, `.fixed(delay)` or
    `.exponential(base, factor=2, max_delay=..., jitter=0.1)`. Delays are seconds or
    `timedelta`, each at most `MAX_DURATION` (100 years; see durable_trio._core.durations).
    ``jitter`` is the fraction (0..1) of each delay that is randomised, so many tasks
    failing together do not retry in lock step.
    """

    kind: RetryKind = attrs.field(converter=_kind)
    base: float = attrs.field(default=0.0, converter=_base_seconds)
    factor: float = attrs.field(default=2.0)
    max_delay: float = attrs.field(default=3600.0, converter=_max_delay_seconds)
    jitter: float = attrs.field(default=0.0)

    @factor.validator
    def _check_factor(self, _: Any, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 100:
            raise InvalidInput(f"retry factor must be between 1 and 100, got {value!r}")

    @jitter.validator
    def _check_jitter(self, _: Any, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise InvalidInput(f"retry jitter must be between 0 and 1, got {value!r}")

    @classmethod
    def none(cls) -> RetryStrategy:
        """Retry immediately (attempts still bounded by max_attempts)."""
        return cls(RetryKind.NONE)

    @classmethod
    def fixed(cls, delay: Duration, *, jitter: float = 0.0) -> RetryStrategy:
        seconds = to_seconds(delay, what="retry delay")
        return cls(RetryKind.FIXED, base=seconds, max_delay=seconds, jitter=jitter)

    @classmethod
    def exponential(
        cls,
        base: Duration = 1.0,
        *,
        factor: float = 2.0,
        max_delay: Duration = 3600.0,
        jitter: float = 0.1,
    ) -> RetryStrategy:
        return cls(
            RetryKind.EXPONENTIAL, base=base, factor=factor, max_delay=max_delay, jitter=jitter
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "base": self.base,
            "factor": self.factor,
            "max_delay": self.max_delay,
            "jitter": self.jitter,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetryStrategy:
        """A stored strategy. Delays over `MAX_DURATION` are clamped to it: a row written
        around `to_seconds` (plain SQL, say) waits at most that long, and never makes the
        database's clock arithmetic overflow."""
        return cls(
            RetryKind(data["kind"]),
            base=_stored_seconds(data.get("base", 0.0)),
            factor=data.get("factor", 2.0),
            max_delay=_stored_seconds(data.get("max_delay", 3600.0)),
            jitter=data.get("jitter", 0.0),
        )


def _stored_seconds(value: Any) -> Any:
    """A stored number of seconds over `MAX_SECONDS`, clamped to it; anything else is
    left for the converter to check."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_SECONDS:
        return MAX_SECONDS
    return value


def retry_delay(strategy: RetryStrategy, failed_attempt: int, rand: float) -> float:
    """Seconds to wait after attempt number `failed_attempt` (1-based) failed.

    `rand` is a uniform number in [0, 1) supplied by the caller, so this stays pure.
    """
    if strategy.kind is RetryKind.NONE:
        return 0.0
    if strategy.kind is RetryKind.FIXED:
        delay = strategy.base
    else:
        try:
            delay = strategy.base * strategy.factor ** (failed_attempt - 1)
        except OverflowError:  # a zero base stays zero however large the power
            delay = strategy.max_delay if strategy.base > 0 else 0.0
    delay = min(delay, strategy.max_delay)
    # Jitter shortens the delay by up to `jitter` of it: never longer than the cap.
    return delay * (1.0 - strategy.jitter * rand)


@attrs.frozen
class FailureDecision:
    """What to do after an attempt failed: retry after `delay` seconds, or fail the task."""

    retry: bool
    delay: float = 0.0


def decide_failure(
    *,
    attempt: int,
    max_attempts: int,
    retryable: bool,
    strategy: RetryStrategy,
    rand: float,
) -> FailureDecision:
    if not retryable or attempt >= max_attempts:
        return FailureDecision(retry=False)
    return FailureDecision(retry=True, delay=retry_delay(strategy, attempt, rand))
