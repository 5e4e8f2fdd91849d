"""A worker whose database connections are killed from the server side recovers.

The worker runs in-process on its own ``application_name``; the test kills every backend
with that name (``pg_terminate_backend``, waiting until each is gone) while runs sit inside
a step's open transaction, and again while the worker is idle. The worker must not crash,
must re-LISTEN, and every task must complete with each committed step executed once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from psycopg import sql
from psycopg.conninfo import make_conninfo

import durable_trio as dt
from durable_trio import _db
from durable_trio._store import Store

GATED = 6  # at most the worker's concurrency: all of them hold a transaction at once

KILL = """
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) AS killed
FROM pg_stat_activity
WHERE application_name = %s AND pid <> pg_backend_pid()
"""
LISTENING = """
SELECT count(*) AS n FROM pg_stat_activity
WHERE application_name = %s AND query LIKE 'LISTEN%%'
"""


async def _one(url: str, query: str, *params: Any) -> Any:
    conn = await _db.connect(url)
    try:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
        assert row is not None
        return next(iter(row.values()))
    finally:
        await conn.close()


async def test_worker_recovers_from_terminated_backends(
    client: dt.Durable, pg_url: str, schema: str
) -> None:
    app = f"victim_{schema}"
    victim_url = make_conninfo(pg_url, application_name=app)
    ledger = sql.Identifier(schema, "ledger")
    async with client.connection() as conn:
        await conn.execute(
            sql.SQL(
                "CREATE TABLE {} (task_id uuid NOT NULL, step text NOT NULL, run_id uuid NOT NULL)"
            ).format(ledger)
        )
        await conn.commit()

    reached = 0
    all_in = trio.Event()
    release = trio.Event()

    async def write(conn: Any, task_id: Any, run_id: Any, step: str) -> str:
        await conn.execute(
            sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(ledger), (task_id, step, run_id)
        )
        return step

    @dt.task("victim")
    async def victim(ctx: dt.TaskContext, params: Any) -> int:
        async def gated(conn: Any) -> str:
            nonlocal reached
            if params["gated"] and not release.is_set():
                # Hold this step's transaction open until the test has killed its backend:
                # the insert below then meets a dead connection.
                reached += 1
                if reached == GATED:
                    all_in.set()
                await release.wait()
            return await write(conn, ctx.task_id, ctx.run_id, "s1")

        await ctx.transaction("s1", gated)
        doubled = await ctx.step("plain", lambda: params["n"] * 2, result_type=int)
        await ctx.transaction("s2", write, ctx.task_id, ctx.run_id, "s2")
        return doubled

    options = dt.SpawnOptions(max_attempts=10, retry=dt.RetryStrategy.fixed(0))
    async with dt.Durable.connect(victim_url, schema=schema, migrate=False) as victim_client:
        victim_client.register(victim)
        client.register(victim)
        spawned = [
            await client.spawn(victim, {"n": n, "gated": True}, options=options)
            for n in range(GATED)
        ]
        # A huge poll interval: after the kills, new work must arrive through a LISTEN
        # that the worker re-established (or the reconnect wake-up), not through polling.
        worker_options = dt.WorkerOptions(concurrency=8, poll_interval=3600)
        with trio.fail_after(60):
            async with victim_client.worker(worker_options) as worker:
                await all_in.wait()
                # Every backend of the worker: the runs' open transactions, the listener,
                # the claim/heartbeat connections.
                killed = await _one(pg_url, KILL, app)
                assert killed >= GATED + 1
                release.set()
                results = [await client.wait_result(victim, s.task_id) for s in spawned]
                assert results == [n * 2 for n in range(GATED)]

                # Kill everything again while the worker is idle, then give it new work.
                assert await _one(pg_url, KILL, app) >= 1
                later = [
                    await client.spawn(victim, {"n": n, "gated": False}, options=options)
                    for n in range(GATED, GATED + 4)
                ]
                results = [await client.wait_result(victim, s.task_id) for s in later]
                assert results == [n * 2 for n in range(GATED, GATED + 4)]
                assert worker.healthy
                assert await _one(pg_url, LISTENING, app) == 1

    for n, s in enumerate(spawned):
        info = await client.get_task(s.task_id)
        assert info.state is dt.TaskState.COMPLETED
        assert info.result == n * 2
    async with client.connection() as conn:
        cur = await conn.execute(
            sql.SQL(
                "SELECT l.task_id, l.step, count(*) AS n, "
                "bool_and(c.run_id = l.run_id) AS same_run FROM {} l "
                "LEFT JOIN {} c ON c.task_id = l.task_id AND c.name = l.step "
                "GROUP BY l.task_id, l.step"
            ).format(ledger, sql.Identifier(schema, "checkpoints"))
        )
        rows = await cur.fetchall()
    # Every committed step ran exactly once, in the run whose checkpoint committed with it.
    assert len(rows) == 2 * (GATED + 4)
    assert all(row["n"] == 1 and row["same_run"] for row in rows)


# Each store call the worker makes, killed at the moment it is made: the worker's backends
# are terminated right before the call, so the call itself meets a dead connection.
CALLS = [
    "claim",
    "next_due",
    "expired_runs",
    "heartbeat",
    "record",
    "record_and_claim",
    "owned_transaction",
    "fail",
]


@pytest.mark.parametrize("call", CALLS)
async def test_backends_killed_at_each_store_call(
    client: dt.Durable,
    pg_url: str,
    schema: str,
    call: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = f"victim_{schema}"
    victim_url = make_conninfo(pg_url, application_name=app)
    ledger = sql.Identifier(schema, "ledger")
    async with client.connection() as conn:
        await conn.execute(
            sql.SQL(
                "CREATE TABLE {} (task_id uuid NOT NULL, step text NOT NULL, run_id uuid NOT NULL)"
            ).format(ledger)
        )
        await conn.commit()

    fired = trio.Event()
    # The plain step waits until the kill happened, so that runs are in flight for the
    # calls made only while a run executes (heartbeat).
    proceed = trio.Event()
    if call != "heartbeat":
        proceed.set()

    async def kill_once(store: Store) -> None:
        if store.pool.url == victim_url and not fired.is_set():
            fired.set()
            assert await _one(pg_url, KILL, app) >= 1

    original = getattr(Store, call)
    if call == "owned_transaction":

        @asynccontextmanager
        async def wrapped_cm(self: Store, *args: Any) -> AsyncIterator[Any]:
            await kill_once(self)
            async with original(self, *args) as value:
                yield value

        monkeypatch.setattr(Store, call, wrapped_cm)
    else:

        async def wrapped(self: Store, *args: Any, **kwargs: Any) -> Any:
            await kill_once(self)
            try:
                return await original(self, *args, **kwargs)
            finally:
                proceed.set()

        monkeypatch.setattr(Store, call, wrapped)

    async def write(conn: Any, task_id: Any, run_id: Any, step: str) -> str:
        await conn.execute(
            sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(ledger), (task_id, step, run_id)
        )
        return step

    @dt.task("victim")
    async def victim(ctx: dt.TaskContext, params: Any) -> int:
        async def plain() -> int:
            await proceed.wait()
            if call == "fail" and ctx.attempt == 1:
                raise RuntimeError("first attempts fail, so that the worker reports it")
            return int(params["n"]) * 2

        await ctx.transaction("s1", write, ctx.task_id, ctx.run_id, "s1")
        doubled = await ctx.step("plain", plain, result_type=int)
        await ctx.transaction("s2", write, ctx.task_id, ctx.run_id, "s2")
        return doubled

    options = dt.SpawnOptions(max_attempts=10, retry=dt.RetryStrategy.fixed(0))
    client.register(victim)
    spawned = [await client.spawn(victim, {"n": n}, options=options) for n in range(3)]
    async with dt.Durable.connect(victim_url, schema=schema, migrate=False) as victim_client:
        victim_client.register(victim)
        # A worker whose one run finishes claims the next with the completion's write.
        concurrency = 1 if call == "record_and_claim" else 4
        worker_options = dt.WorkerOptions(
            concurrency=concurrency, claim_timeout=1.5, poll_interval=0.2
        )
        with trio.fail_after(60):
            async with victim_client.worker(worker_options) as worker:
                results = [await client.wait_result(victim, s.task_id) for s in spawned]
                assert results == [0, 2, 4]
                assert fired.is_set()
                # Still working after the kill: a new task goes through.
                extra = await client.spawn(victim, {"n": 5}, options=options)
                assert await client.wait_result(victim, extra.task_id) == 10
                assert worker.healthy

    async with client.connection() as conn:
        cur = await conn.execute(
            sql.SQL("SELECT task_id, step, count(*) AS n FROM {} GROUP BY 1, 2").format(ledger)
        )
        rows = await cur.fetchall()
    assert len(rows) == 2 * 4
    assert all(row["n"] == 1 for row in rows)
