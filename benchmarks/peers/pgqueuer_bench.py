"""pgqueuer peer: one job = one async entrypoint call (pgqueuer has no step checkpoints).
Schema from Queries.install() (what `pgq install` runs); jobs enqueued in batches with
Queries.enqueue(list, list, list); one PgQueuer worker on one asyncpg connection (as in
its quick start), LISTEN/NOTIFY on (its default). Concurrency C is the worker cap
max_concurrent_tasks=C with batch_size=C//2 (the cap must be at least twice the batch
size). For C = 1 that is impossible: it runs with batch_size=1 and max_concurrent_tasks=2,
its smallest cap. (The other way to get one job at a time, the entrypoint's
concurrency_limit=1, measured ~10 jobs/s here: it is not its fast path.)
pgqueuer buffers completion writes (JobStatusLogBuffer) and writes them in batches.
Completions: pgqueuer_log rows with status 'successful'."""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
from _peer_common import parse_args, report, wait_count
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

DONE = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"


async def main() -> None:
    args = parse_args()
    setup = await asyncpg.connect(args.url)
    queries = Queries(AsyncpgDriver(setup))
    await queries.install()
    chunk = 5000
    for start in range(0, args.n, chunk):
        k = min(chunk, args.n - start)
        await queries.enqueue(
            ["one_step"] * k, [str(start + i).encode() for i in range(k)], [0] * k
        )
    await setup.close()

    conn = await asyncpg.connect(args.url)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("one_step")
    async def one_step(job: Job) -> None:
        int(job.payload or b"0") + 1

    t0 = time.perf_counter()
    batch = max(1, args.concurrency // 2)
    cap = max(2, args.concurrency)
    run = pgq.run(batch_size=batch, max_concurrent_tasks=cap)
    config = {"batch_size": batch, "max_concurrent_tasks": cap}
    worker = asyncio.create_task(run)
    done = await asyncio.to_thread(wait_count, args.url, DONE, args.n, args.timeout)
    seconds = time.perf_counter() - t0
    pgq.shutdown.set()
    with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
        await asyncio.wait_for(worker, 30)
    report("pgqueuer", "pgqueuer", args, done, seconds, config=config)


if __name__ == "__main__":
    asyncio.run(main())
