"""Testing kit: step workers deterministically, move the database clock, skip time.

The database's clock is the only clock that matters: leases, retries, sleeps and event
timeouts are all decided by ``clock_now()`` in SQL. `advance_clock` moves it forward for
every connection of the schema at once, so tests never sleep for real.

    async with Durable.connect(url, queue="q") as client:
        client.register(my_task)
        spawned = await client.spawn(my_task, Params(...))
        report = await run_once(client)             # one pass: what is due now
        assert report.suspended == [spawned.task_id]
        await run_until_idle(client, skip_time=True)  # sleeps and retries, without waiting

The pytest plugin (`durable_trio.testing.pytest_plugin`, loaded automatically when
durable_trio is installed) provides the ``durable_server``, ``durable_schema``,
``durable_client`` and ``durable_clock`` fixtures. See docs/testing.md.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import attrs
import trio

from .._client import Durable
from .._core.durations import Duration, to_seconds
from .._core.options import WorkerOptions
from .._core.report import PassReport, RunOutcome, RunReport
from .._ephemeral import EphemeralPostgres, PostgresUnavailable
from .._errors import InvalidInput, NeverIdle
from .._schedules import fire_due_schedules
from .._worker import reap_expired as _reap

__all__ = [
    "DatabaseClock",
    "EphemeralPostgres",
    "NeverIdle",
    "PassReport",
    "PostgresUnavailable",
    "RunOutcome",
    "RunReport",
    "advance_clock",
    "database_now",
    "fire_schedules",
    "reap_expired",
    "run_once",
    "run_until_idle",
]

# The worker of run_once and run_until_idle unless options are given: 8 runs per pass.
_OPTIONS = WorkerOptions(concurrency=8)


async def advance_clock(client: Durable, by: Duration) -> timedelta:
    """Move the database clock of `client`'s schema forward by `by`; return the offset."""
    return await client.store.advance_clock(to_seconds(by, what="advance_clock by"))


async def database_now(client: Durable) -> datetime:
    """The schema's current (possibly advanced) time."""
    return await client.store.now()


@attrs.frozen
class DatabaseClock:
    """The clock of one client's schema (the ``durable_clock`` fixture)."""

    client: Durable

    async def now(self) -> datetime:
        """The schema's current (possibly advanced) time."""
        return await database_now(self.client)

    async def advance(self, by: Duration) -> timedelta:
        """Move the clock forward by `by` (seconds or a timedelta); return the offset."""
        return await advance_clock(self.client, by)


async def reap_expired(client: Durable) -> int:
    """Fail runs whose lease has expired now, enforce cancellation deadlines and spawn
    due schedule slots (what every worker's claim loop does periodically); return how
    many runs were reaped."""
    return await _reap(client.store, [client.queue], hooks=client._core.hooks)


async def fire_schedules(client: Durable) -> int:
    """Spawn the due slots of every schedule now (what each worker's periodic pass does);
    return how many tasks were created. Advance the clock past a slot first."""
    return await fire_due_schedules(client.store, hooks=client._core.hooks)


async def run_once(
    client: Durable, options: WorkerOptions | None = None, *, limit: int | None = None
) -> PassReport:
    """One pass of a worker for `client`'s registered tasks: claim up to `limit` runs due
    now (default: the options' concurrency, 8), run each to completion, suspension or
    failure in the calling task, and report what happened. See `Worker.run_once`."""
    return await client.new_worker(options or _OPTIONS).run_once(limit=limit)


async def run_until_idle(
    client: Durable,
    options: WorkerOptions | None = None,
    *,
    skip_time: bool = False,
    max_jumps: int = 1000,
    max_skip: Duration | None = None,
    max_seconds: float = 60.0,
) -> int:
    """Work the queue pass after pass (`run_once`) until a pass finds nothing due now;
    return how many runs were claimed. Expired leases are reaped before each pass.

    Without `skip_time`, tasks sleeping into the future stay asleep (advance the clock to
    wake them). With ``skip_time=True``, when nothing is due the database clock jumps to
    the next due time (a sleep's wake-up, a retry's backoff, an event wait's timeout, a
    delayed spawn) and work goes on, until nothing is left but event waits without a
    timeout and finished tasks. Caps: at most `max_jumps` jumps (`NeverIdle` beyond:
    something sleeps in a loop forever), and at most `max_skip` of simulated time in total
    (work due later is left asleep, and the call returns).

    Raises `trio.TooSlowError` after `max_seconds` of real time (a task is stuck).
    """
    if isinstance(max_jumps, bool) or not isinstance(max_jumps, int) or max_jumps < 0:
        raise InvalidInput(f"max_jumps must be a non-negative integer, got {max_jumps!r}")
    budget = math.inf if max_skip is None else to_seconds(max_skip, what="max_skip")
    opts = options or _OPTIONS
    worker = client.new_worker(opts)
    queues = list(opts.queues or [client.queue])
    names = client.registered
    claimed = jumps = 0
    skipped = 0.0
    with trio.fail_after(max_seconds):
        while True:
            await _reap(client.store, queues, hooks=client._core.hooks)
            report = await worker.run_once()
            claimed += report.claimed
            if report.claimed:
                continue
            due = await client.store.next_due(queues, names) if skip_time else None
            if due is None:
                return claimed
            # Rounded up to the microsecond (the clock's resolution), so the run is due
            # after the jump; a run due already (real time moved) costs a jump of zero.
            jump = max(math.ceil(due * 1e6) / 1e6, 0.0)
            if skipped + jump > budget:
                return claimed
            if jumps >= max_jumps:
                raise NeverIdle(
                    f"still not idle after {jumps} clock jumps ({skipped:g} s skipped): pass "
                    "max_skip= to bound the simulated time, or raise max_jumps"
                )
            if jump > 0:
                await client.store.advance_clock(jump)
            jumps += 1
            skipped += jump
