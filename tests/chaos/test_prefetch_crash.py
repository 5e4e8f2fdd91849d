"""A worker SIGKILLed while it holds runs claimed ahead (`WorkerOptions.prefetch`) loses
nothing: the held runs' leases expire, the reaper retries them (spending the attempt, as
for a running run), and every task completes with each committed step executed once."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import worker_proc
from psycopg import sql

import durable_trio as dt
from support import fetch, runs_held_by

WORKER_SCRIPT = Path(__file__).with_name("worker_proc.py")
TASKS = 8
CONCURRENCY, PREFETCH = 1, 4


async def test_a_crash_with_held_runs_loses_nothing(
    client: dt.Durable, pg_url: str, schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker_proc, "SCHEMA", schema)  # the ledger of the task run here
    chaos_task = worker_proc.chaos_task
    async with client.connection() as conn:
        await conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigserial PRIMARY KEY, task_id uuid NOT NULL,"
                " step text NOT NULL, run_id uuid NOT NULL, attempt integer NOT NULL)"
            ).format(sql.Identifier(schema, "ledger"))
        )
        await conn.commit()
    client.register(chaos_task)
    spawned = [await client.spawn(chaos_task, {"n": n}) for n in range(TASKS)]
    log = (tmp_path / "crashing.log").open("wb")
    proc = await trio.lowlevel.open_process(
        [
            sys.executable,
            str(WORKER_SCRIPT),
            pg_url,
            schema,
            "crashing",
            str(CONCURRENCY),
            str(PREFETCH),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        # One run executing, PREFETCH held: then the process vanishes.
        with trio.fail_after(60):
            while await runs_held_by(client, "crashing") < CONCURRENCY + PREFETCH:
                await trio.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    held = await fetch(
        client,
        "SELECT task_id FROM @s.runs WHERE state = 'running' AND worker_id = 'crashing'",
    )
    assert len(held) >= PREFETCH  # the held runs at least (the running one may have ended)

    # The process's 2 s leases run out; this worker reaps and reruns them.
    options = dt.WorkerOptions(concurrency=4, poll_interval=0.05, claim_timeout=2.0)
    async with client.worker(options):
        results = [await client.wait_result(s, timeout=120) for s in spawned]
    assert [r["product"] for r in results] == [7 * n for n in range(TASKS)]

    lost = await fetch(
        client,
        "SELECT t.attempts, r.error->>'type' AS error FROM @s.runs r"
        " JOIN @s.tasks t USING (task_id) WHERE r.attempt = 1 AND r.task_id = ANY(%s)",
        [row["task_id"] for row in held],
    )
    # Each run the crash left behind was reaped (LeaseExpired) and its attempt spent.
    assert [(row["attempts"], row["error"]) for row in lost] == [(2, "LeaseExpired")] * len(held)
    # Each transactional step committed once per task, by the run whose checkpoint it is.
    ledger = await fetch(
        client,
        "SELECT l.task_id, l.step, c.run_id = l.run_id AS matched FROM @s.ledger l"
        " LEFT JOIN @s.checkpoints c ON c.task_id = l.task_id AND c.name = l.step",
    )
    assert len(ledger) == 3 * TASKS
    assert len({(row["task_id"], row["step"]) for row in ledger}) == 3 * TASKS
    assert all(row["matched"] for row in ledger)
