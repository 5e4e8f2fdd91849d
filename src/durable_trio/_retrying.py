"""Database I/O tried again while the database is away: the one retry loop of the worker,
its runs and the listener. The policy (pauses, when to give up) is the pure
`_core.backoff`; this module only sleeps and calls.

Local rather than tenacity or stamina (which pip can install here): a pause is a plain
`trio.sleep` or a sleep the caller passes (the claim loop's ends early on shutdown), so
cancelling the caller stops it at once, like any trio code; the deadline is a callable
read after each failure, because a run's lease end moves whenever a heartbeat renews it;
the writer gives up run by run, each at its own lease end, in the `on_retry` hook; and
it costs no dependency. Task retries (`RetryStrategy`) are another matter: the database
schedules those.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ._core.backoff import BackoffPolicy, gives_up

__all__ = ["IO_BACKOFF", "retrying"]

T = TypeVar("T")
# Within a run's lease: short pauses, as a lease lasts tens of seconds.
IO_BACKOFF = BackoffPolicy(first=0.05, cap=1.0)


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[BaseException], ...],
    policy: BackoffPolicy = IO_BACKOFF,
    deadline: Callable[[], float] | None = None,
    on_retry: Callable[[BaseException, float], Awaitable[None]] | None = None,
    sleep: Callable[[float], Awaitable[None]] = trio.sleep,
) -> T:
    """``await attempt()`` until it returns, pausing after each failure in `retry_on`
    as `policy` says. Once the next try would come at or past ``deadline()`` (a
    `time.monotonic` reading), the last error is raised instead. `on_retry(error,
    pause)` is awaited before each pause. Other errors, and cancellation, propagate."""
    failures = 0
    while True:
        try:
            return await attempt()
        except retry_on as ex:
            failures += 1
            pause = policy.delay(failures, random.random())
            end = deadline() if deadline is not None else None
            if gives_up(now=time.monotonic(), delay=pause, deadline=end):
                raise
            if on_retry is not None:
                await on_retry(ex, pause)
        await sleep(pause)
