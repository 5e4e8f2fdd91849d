"""pgqueuer's enqueue rate, beside the spawn_rate scenario: ``python pgqueuer_spawn.py URL
N_SINGLE N_BATCH`` against a fresh database. One by one: ``Queries.enqueue`` of one job,
N_SINGLE times (autocommit, one statement and commit each, its trigger notifying); batch:
one ``Queries.enqueue`` of N_BATCH jobs (its lists form). One asyncpg connection, as in
pgqueuer's quick start. The last stdout line is a JSON report."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from importlib import metadata

import asyncpg
from pgqueuer.db import AsyncpgDriver
from pgqueuer.queries import Queries


async def main() -> None:
    url, n_single, n_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    conn = await asyncpg.connect(url)
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()
    t0 = time.perf_counter()
    for i in range(n_single):
        await queries.enqueue("one_step", str(i).encode(), 0)
    single = n_single / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    await queries.enqueue(
        ["one_step"] * n_batch, [str(i).encode() for i in range(n_batch)], [0] * n_batch
    )
    batch = n_batch / (time.perf_counter() - t0)
    await conn.close()
    report = {
        "system": "pgqueuer",
        "version": metadata.version("pgqueuer"),
        "one_by_one_per_s": single,
        "batch_per_s": batch,
        "batch_size": n_batch,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main())
