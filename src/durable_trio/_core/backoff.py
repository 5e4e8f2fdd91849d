"""How long to wait before trying database I/O again, and when to stop trying: capped
exponential backoff with jitter, bounded by a deadline (a run's lease). The trio side
that sleeps and retries is `durable_trio._retrying`. Task retries are `retry`."""

from __future__ import annotations

import attrs

__all__ = ["BackoffPolicy", "gives_up"]

# 2**60 times any first delay is past every cap: larger exponents would overflow a float.
_MAX_EXPONENT = 60


@attrs.frozen
class BackoffPolicy:
    """Pause `first` seconds after the first failure, doubling (`factor`) after each one
    more, up to `cap`; `jitter` takes up to that fraction off each pause at random, so
    that workers that lost the database together do not all come back in step."""

    first: float = 0.05
    cap: float = 1.0
    factor: float = 2.0
    jitter: float = 0.25

    def delay(self, failures: int, rand: float) -> float:
        """The pause after `failures` failures in a row (1 or more); `rand` in [0, 1)."""
        exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
        return min(self.cap, self.first * self.factor**exponent) * (1.0 - self.jitter * rand)


def gives_up(*, now: float, delay: float, deadline: float | None) -> bool:
    """Whether a retry after `delay` seconds would come at or past `deadline` (None: no
    deadline), so that trying again is pointless (the lease is over by then)."""
    return deadline is not None and now + delay >= deadline
