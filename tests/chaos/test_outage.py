"""Workers across a database outage (server stopped, then started again), in-process.

- A worker shut down while the database is down returns cleanly (its release attempts fail;
  the leases expire instead) and a worker started while it is down starts working once
  it is back.
- A worker that keeps running through an outage longer than its leases abandons the runs
  it can no longer fence (their cancel scopes fire), then, once the server is back, its
  reaper re-runs them: every task completes and no committed step runs twice.

A dedicated durable server (not the shared session one), since it is stopped. Real time:
leases are real-time here; waits are on conditions, and nothing asserts on timing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trio
from psycopg import sql

import durable_trio as dt
from durable_trio._ephemeral import EphemeralPostgres

N = 4
LEDGER = "CREATE TABLE {} (task_id uuid NOT NULL, step text NOT NULL, run_id uuid NOT NULL)"


@pytest.fixture(scope="module")
def server() -> Iterator[EphemeralPostgres]:
    with EphemeralPostgres(fast=False) as pg:
        yield pg


async def _down(server: EphemeralPostgres) -> None:
    done = await trio.to_thread.run_sync(server._pg_ctl, server.root, "stop", "-m", "immediate")
    assert done.returncode == 0, done.stdout + done.stderr


async def _up(server: EphemeralPostgres) -> None:
    done = await trio.to_thread.run_sync(server._pg_ctl, server.root, "start")
    assert done.returncode == 0, done.stdout + done.stderr


async def _until(condition: Any) -> None:
    with trio.fail_after(60):
        while not condition():
            await trio.sleep(0.02)


class Workload:
    """Tasks that write a ledger row in step s1, park until `hold` is set, then do s2."""

    def __init__(self, schema: str) -> None:
        self.ledger = sql.Identifier(schema, "ledger")
        self.parked = 0
        self.all_parked = trio.Event()
        self.hold = trio.Event()

        async def write(conn: Any, task_id: Any, run_id: Any, step: str) -> str:
            await conn.execute(
                sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(self.ledger),
                (task_id, step, run_id),
            )
            return step

        @dt.task("parked")
        async def parked(ctx: dt.TaskContext, params: Any) -> int:
            await ctx.transaction("s1", write, ctx.task_id, ctx.run_id, "s1")
            if not self.hold.is_set():
                self.parked += 1
                if self.parked == N:
                    self.all_parked.set()
                await self.hold.wait()
            await ctx.transaction("s2", write, ctx.task_id, ctx.run_id, "s2")
            return int(params["n"])

        self.task = parked

    async def setup(self, url: str, schema: str) -> list[Any]:
        options = dt.SpawnOptions(max_attempts=10, retry=dt.RetryStrategy.fixed(0))
        async with dt.Durable.connect(url, schema=schema) as client:
            async with client.connection() as conn:
                await conn.execute(sql.SQL(LEDGER).format(self.ledger))
                await conn.commit()
            client.register(self.task)
            return [
                (await client.spawn(self.task, {"n": n}, options=options)).task_id for n in range(N)
            ]

    async def check(self, client: dt.Durable, task_ids: list[Any]) -> None:
        results = [await client.wait_result(self.task, t, timeout=60) for t in task_ids]
        assert results == list(range(N))
        async with client.connection() as conn:
            cur = await conn.execute(
                sql.SQL("SELECT task_id, step, count(*) AS n FROM {} GROUP BY 1, 2").format(
                    self.ledger
                )
            )
            rows = await cur.fetchall()
        assert len(rows) == 2 * N
        assert all(row["n"] == 1 for row in rows)


async def test_shutdown_during_outage_and_start_while_down(
    server: EphemeralPostgres, schema: str
) -> None:
    work = Workload(schema)
    task_ids = await work.setup(server.url, schema)
    # A client that never connects by itself: its workers have their own pools.
    offline = dt.Durable(server.url, queue="default", schema=schema, pool_size=1)
    offline.register(work.task)
    options = dt.WorkerOptions(claim_timeout=1.5, poll_interval=0.1, shutdown_grace=0.2)

    first = offline.new_worker(options)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        with trio.fail_after(60):
            await work.all_parked.wait()
        await _down(server)
        # Graceful shutdown with runs in flight and no database: grace, cancel, failed
        # releases; run() must return, not raise.
        first.shutdown()
    assert first.in_flight == 0

    second = offline.new_worker(options)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)  # starts although nothing answers
        work.hold.set()
        await _up(server)
        async with dt.Durable.connect(server.url, schema=schema, migrate=False) as client:
            await work.check(client, task_ids)
        assert second.healthy
        second.shutdown()


async def test_runs_abandoned_in_a_long_outage_are_redone(
    server: EphemeralPostgres, schema: str
) -> None:
    work = Workload(schema)
    task_ids = await work.setup(server.url, schema)
    offline = dt.Durable(server.url, queue="default", schema=schema, pool_size=1)
    offline.register(work.task)
    worker = offline.new_worker(dt.WorkerOptions(claim_timeout=1.0, poll_interval=0.1))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(60):
            await work.all_parked.wait()
        await _down(server)
        work.hold.set()
        # Their next write cannot be fenced while the database is away: once their leases
        # have run out, the worker gives the runs up (cancel scopes) instead of writing.
        await _until(lambda: worker.in_flight == 0)
        assert not worker.healthy
        await _up(server)
        # The same worker reaps its own expired runs and re-runs them from checkpoints.
        async with dt.Durable.connect(server.url, schema=schema, migrate=False) as client:
            await work.check(client, task_ids)
            for task_id in task_ids:
                assert (await client.get_task(task_id)).attempts >= 2
        assert worker.healthy
        worker.shutdown()
