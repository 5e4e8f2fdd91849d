"""A worker process for the chaos test (tests/chaos/test_chaos.py).

    python worker_proc.py URL SCHEMA WORKER_ID [CONCURRENCY [PREFETCH]]

Registers the ``chaos`` task and works the ``default`` queue until SIGTERM (graceful
shutdown, exit 0). The test SIGKILLs these processes at random moments and restarts
Postgres under them; any other way of ending (an exception escaping the worker, a
crash) is a bug the test reports, with this process's stderr.

The task: three steps whose side effect is one row in the test's ``ledger`` table,
written by ``ctx.transaction`` in the same transaction as the step's checkpoint (so the
ledger counts committed step executions exactly), and one plain ``ctx.step``.
"""

from __future__ import annotations

import logging
import random
import signal
import sys
from typing import Any

import psycopg
import trio

import durable_trio as dt

LEDGER_INSERT = "INSERT INTO {}.ledger (task_id, step, run_id, attempt) VALUES (%s, %s, %s, %s)"
SCHEMA = "durable"


@dt.task("chaos")
async def chaos_task(ctx: dt.TaskContext, params: Any) -> dict[str, Any]:
    async def write_ledger(conn: Any, step: str) -> str:
        query = psycopg.sql.SQL(LEDGER_INSERT).format(psycopg.sql.Identifier(SCHEMA))
        await conn.execute(query, (ctx.task_id, step, ctx.run_id, ctx.attempt))
        # Some time inside the transaction, so that kills and restarts land mid-step.
        await trio.sleep(random.random() * 0.02)
        return step

    async def work() -> int:
        await trio.sleep(random.random())
        return int(params["n"]) * 7

    done = [await ctx.transaction("s1", write_ledger, "s1")]
    product = await ctx.step("work", work, result_type=int)
    done.append(await ctx.transaction("s2", write_ledger, "s2"))
    done.append(await ctx.transaction("s3", write_ledger, "s3"))
    return {"n": params["n"], "product": product, "steps": done}


async def main(
    url: str, schema: str, worker_id: str, concurrency: str = "8", prefetch: str = "0"
) -> None:
    global SCHEMA
    SCHEMA = schema
    options = dt.WorkerOptions(
        concurrency=int(concurrency),
        prefetch=int(prefetch),
        claim_timeout=2.0,
        poll_interval=0.2,
        worker_id=worker_id,
        shutdown_grace=5.0,
    )
    # Not Durable.connect(): that fails fast when Postgres is down, and replacements are
    # often started during an outage. The worker itself must cope with that, so it gets
    # a client object that never opened its own pool (the worker has its own pools).
    client = dt.Durable(url, queue="default", schema=schema, pool_size=1)
    client.register(chaos_task)
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with client.worker(options):
            print(f"ready {worker_id}", flush=True)
            async for _ in signals:
                break


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    trio.run(main, *sys.argv[1:6])
