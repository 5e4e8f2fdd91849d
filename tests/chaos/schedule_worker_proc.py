"""A worker process for the schedule crash test (tests/chaos/test_schedule_crash.py).

    python schedule_worker_proc.py URL SCHEMA WORKER_ID

Registers the ``tick`` task (it does nothing) and works the ``default`` queue until
SIGTERM (graceful shutdown, exit 0); its periodic pass fires the schema's schedules. The
URL carries ``application_name=WORKER_ID``, so the test can tell this process's database
sessions apart.
"""

from __future__ import annotations

import logging
import signal
import sys

import trio

import durable_trio as dt


@dt.task("tick")
async def tick(ctx: dt.TaskContext, params: None) -> None:
    return None


async def main(url: str, schema: str, worker_id: str) -> None:
    options = dt.WorkerOptions(
        concurrency=4, claim_timeout=2.0, poll_interval=0.02, worker_id=worker_id
    )
    # Not Durable.connect(): the worker has its own pools, and must cope with an outage.
    client = dt.Durable(url, queue="default", schema=schema, pool_size=1)
    client.register(tick)
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with client.worker(options):
            print(f"ready {worker_id}", flush=True)
            async for _ in signals:
                break


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    trio.run(main, *sys.argv[1:4])
