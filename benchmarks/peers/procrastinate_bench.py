"""procrastinate peer: one job = one async task body; procrastinate has no step
checkpoints, so its job is the closest thing to a one-step durable task. Jobs are deferred
with batch_defer_async; the worker is app.run_worker_async(concurrency=C) with
LISTEN/NOTIFY on (the default). Completions: procrastinate_jobs.status = 'succeeded'."""

from __future__ import annotations

import asyncio
import contextlib
import time

import procrastinate
from _peer_common import parse_args, report, wait_count

DONE = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"


async def main() -> None:
    args = parse_args()
    # Pool sized like durable_trio's worker (min(C, 32) executing connections + control).
    pool_size = min(args.concurrency, 32) + 2
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=args.url, min_size=1, max_size=pool_size)
    )

    @app.task(name="one_step")
    async def one_step(x: int) -> int:
        return x + 1

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        chunk = 5000
        for start in range(0, args.n, chunk):
            await one_step.batch_defer_async(
                *({"x": i} for i in range(start, min(args.n, start + chunk)))
            )
        t0 = time.perf_counter()
        worker = asyncio.create_task(app.run_worker_async(concurrency=args.concurrency))
        done = await asyncio.to_thread(wait_count, args.url, DONE, args.n, args.timeout)
        seconds = time.perf_counter() - t0
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
    report("procrastinate", "procrastinate", args, done, seconds, pool_max_size=pool_size)


if __name__ == "__main__":
    asyncio.run(main())
