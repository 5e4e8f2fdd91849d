"""Helpers for testing durable tasks: a fake clock and a way to work a queue until idle.

The database's clock is the only clock that matters: leases, retries, sleeps and event
timeouts are all decided by ``clock_now()`` in SQL. `advance_clock` moves it forward for
every connection at once, so tests never sleep for real.

    async with Durable.connect(url, queue="q") as client:
        client.register(my_task)
        spawned = await client.spawn(my_task, Params(...))
        await run_until_idle(client)              # runs everything due now
        await advance_clock(client, 3600)         # an hour passes
        await run_until_idle(client)              # sleepers that are now due run
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import trio

from ._client import Durable
from ._core.durations import Duration, to_seconds
from ._core.options import WorkerOptions
from ._schedules import fire_due_schedules
from ._worker import Worker
from ._worker import reap_expired as _reap

__all__ = ["advance_clock", "database_now", "fire_schedules", "reap_expired", "run_until_idle"]


async def advance_clock(client: Durable, by: Duration) -> timedelta:
    """Move the database clock of `client`'s schema forward by `by`; return the offset."""
    return await client.store.advance_clock(to_seconds(by, what="advance_clock by"))


async def database_now(client: Durable) -> Any:
    """The schema's current (possibly advanced) time."""
    return await client.store.now()


async def reap_expired(client: Durable, worker: Worker | None = None) -> int:
    """Fail runs whose lease has expired now, enforce cancellation deadlines and spawn
    due schedule slots (what every worker's claim loop does periodically); return how
    many runs were reaped. `worker` is accepted for compatibility and unused."""
    return await _reap(client.store, [client.queue])


async def fire_schedules(client: Durable) -> int:
    """Spawn the due slots of every schedule now (what each worker's periodic pass does);
    return how many tasks were created. Advance the clock past a slot first."""
    return await fire_due_schedules(client.store)


async def run_until_idle(
    client: Durable,
    options: WorkerOptions | None = None,
    *,
    max_seconds: float = 60.0,
) -> int:
    """Run a worker until nothing is claimable now and nothing is in flight.

    Tasks sleeping into the future stay asleep (advance the clock to wake them). Returns
    the number of runs claimed. Raises `trio.TooSlowError` after `max_seconds` of real
    time, which usually means a task is stuck.
    """
    opts = options or WorkerOptions(concurrency=8, poll_interval=0.05)
    worker = client.new_worker(opts)
    names = client.registered
    queues = list(opts.queues or [client.queue])
    with trio.fail_after(max_seconds):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            while True:
                await _reap(client.store, queues)
                await trio.sleep(0.01)
                # A claim in flight has taken runs that are not in_flight yet: wait for it.
                if worker.busy:
                    continue
                idle = await client.store.claimable_count(queues, names) == 0
                if idle and not worker.busy:
                    break
            worker.shutdown()
    return worker.claimed_total
