"""The raw-SQL ceiling: the fewest statements a durable one-step task needs, issued directly
with psycopg (no durable_trio), with the same concurrency structure as a worker.

Per task: a spawn INSERT (+ NOTIFY), a batched ``FOR UPDATE SKIP LOCKED`` claim (up to free
capacity), one checkpoint INSERT, and a completion UPDATE fenced on the claiming worker.
The worker is one dispatcher thread (claims), one listener thread (LISTEN, wakes the
dispatcher) and N executor threads, each with its own connection: N runs in flight at once.

Also runnable as a worker subprocess (``python raw_ceiling.py worker URL SCHEMA C``) for
the two-process scenario: see `_util.WorkerProcess` for the protocol.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from _util import (
    WorkerProcess,
    backlog_rate,
    connect,
    database_clock,
    summarize,
    two_process_result,
    wait_count,
)

CHANNEL = "raw_bench"
QUEUE = "bench"

SCHEMA_SQL = """
CREATE SCHEMA {s};
CREATE TABLE {s}.jobs (
    id bigserial PRIMARY KEY,
    queue text NOT NULL,
    name text NOT NULL,
    params jsonb NOT NULL,
    state text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    worker text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    claimed_at timestamptz,
    lease_expires_at timestamptz,
    finished_at timestamptz,
    result jsonb
) WITH (fillfactor = 80);
CREATE INDEX jobs_claim ON {s}.jobs (queue, id) WHERE state = 'pending';
CREATE TABLE {s}.checkpoints (
    job_id bigint NOT NULL,
    name text NOT NULL,
    value jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (job_id, name)
);
"""

SPAWN = """
WITH j AS (INSERT INTO {s}.jobs (queue, name, params) VALUES (%s, 'one_step', %s) RETURNING id)
SELECT j.id, pg_notify('raw_bench', %s) FROM j
"""
CLAIM = """
UPDATE {s}.jobs SET state = 'running', worker = %s, attempts = attempts + 1,
    claimed_at = clock_timestamp(), lease_expires_at = clock_timestamp() + interval '30 s'
WHERE id IN (
    SELECT id FROM {s}.jobs WHERE queue = %s AND state = 'pending'
    ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
RETURNING id, params
"""
CHECKPOINT = "INSERT INTO {s}.checkpoints (job_id, name, value) VALUES (%s, 'work', %s)"
# The checkpoint INSERT alone, as the checkpoint-latency scenarios time it.
INSERT_CHECKPOINT = "INSERT INTO {s}.checkpoints (job_id, name, value) VALUES (%s, %s, %s)"
COMPLETE = """
UPDATE {s}.jobs SET state = 'completed', finished_at = clock_timestamp(), result = %s
WHERE id = %s AND worker = %s AND state = 'running'
"""


def q(text: str, schema: str) -> bytes:
    return sql.SQL(text).format(s=sql.Identifier(schema)).as_string(None).encode()


def setup(url: str, schema: str) -> None:
    with connect(url) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(q(SCHEMA_SQL, schema))


def drop(url: str, schema: str) -> None:
    with connect(url) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def preload(url: str, schema: str, n: int, chunk: int = 20_000) -> None:
    """Insert n pending jobs quickly (one statement per chunk), then one NOTIFY."""
    with connect(url) as conn:
        done = 0
        while done < n:
            k = min(chunk, n - done)
            conn.execute(
                q(
                    "INSERT INTO {s}.jobs (queue, name, params) "
                    "SELECT %s, 'one_step', jsonb_build_object('x', g) "
                    "FROM generate_series(1, %s) g",
                    schema,
                ),
                (QUEUE, k),
            )
            done += k
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, QUEUE))


def completed(conn: psycopg.Connection[Any], schema: str) -> int:
    row = conn.execute(
        q("SELECT count(*) FROM {s}.jobs WHERE state = 'completed'", schema)
    ).fetchone()
    return int(row[0]) if row else 0


class RawWorker:
    """Dispatcher + listener + N executor threads. ``zero_step`` skips the checkpoint."""

    def __init__(self, url: str, schema: str, concurrency: int, *, zero_step: bool = False) -> None:
        self.url = url
        self.schema = schema
        self.concurrency = concurrency
        self.zero_step = zero_step
        self.worker_id = f"raw-{os.getpid()}-{id(self)}"
        self._free = threading.Semaphore(concurrency)
        self._work: queue.Queue[tuple[int, Any] | None] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._claim = q(CLAIM, schema)
        self._checkpoint = q(CHECKPOINT, schema)
        self._complete = q(COMPLETE, schema)
        self.errors: list[str] = []
        # connect everything up front, so start() only starts threads
        self._dispatch_conn = connect(url)
        self._listen_conn = connect(url)
        self._listen_conn.execute(f"LISTEN {CHANNEL}")
        self._exec_conns = [connect(url) for _ in range(concurrency)]

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._listen, daemon=True),
            threading.Thread(target=self._dispatch, daemon=True),
        ] + [
            threading.Thread(target=self._execute, args=(conn,), daemon=True)
            for conn in self._exec_conns
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for _ in self._exec_conns:
            self._work.put(None)
        for _ in range(self.concurrency):
            self._free.release()
        for thread in self._threads:
            thread.join(timeout=10)
        for conn in [self._dispatch_conn, self._listen_conn, *self._exec_conns]:
            conn.close()

    def _listen(self) -> None:
        try:
            while not self._stop.is_set():
                for _ in self._listen_conn.notifies(timeout=0.2):
                    self._wake.set()
        except Exception as ex:  # noqa: BLE001 - reported, not raised, in a thread
            if not self._stop.is_set():
                self.errors.append(repr(ex))

    def _dispatch(self) -> None:
        conn = self._dispatch_conn
        try:
            while not self._stop.is_set():
                self._free.acquire()
                if self._stop.is_set():
                    return
                free = 1
                while free < self.concurrency and self._free.acquire(blocking=False):
                    free += 1
                self._wake.clear()
                rows = conn.execute(self._claim, (self.worker_id, QUEUE, free)).fetchall()
                for row in rows:
                    self._work.put((row[0], row[1]))
                for _ in range(free - len(rows)):
                    self._free.release()
                if not rows:
                    self._wake.wait(timeout=1.0)  # NOTIFY, or poll
        except Exception as ex:  # noqa: BLE001
            if not self._stop.is_set():
                self.errors.append(repr(ex))

    def _execute(self, conn: psycopg.Connection[Any]) -> None:
        try:
            while True:
                item = self._work.get()
                if item is None:
                    return
                job_id, params = item
                value = json.dumps(params["x"] + 1)
                if not self.zero_step:
                    conn.execute(self._checkpoint, (job_id, value))
                conn.execute(self._complete, (value, job_id, self.worker_id))
                self._free.release()
        except Exception as ex:  # noqa: BLE001
            if not self._stop.is_set():
                self.errors.append(repr(ex))


def wait_completed(url: str, schema: str, n: int, timeout: float) -> int:
    query = q("SELECT count(*) FROM {s}.jobs WHERE state = 'completed'", schema)
    return wait_count(url, query, n, timeout, poll=0.01)


def drain(
    url: str,
    schema: str,
    n: int,
    concurrency: int,
    *,
    zero_step: bool = False,
    timeout: float = 300,
) -> dict[str, Any]:
    """Throughput: n pending jobs, one worker at `concurrency`, timed until the database
    says all n are completed."""
    setup(url, schema)
    try:
        preload(url, schema, n)
        worker = RawWorker(url, schema, concurrency, zero_step=zero_step)
        t0 = time.perf_counter()
        worker.start()
        done = wait_completed(url, schema, n, timeout)
        seconds = time.perf_counter() - t0
        worker.stop()
        return {
            "n": n,
            "completed_in_db": done,
            "seconds": seconds,
            "tasks_per_s": done / seconds,
            "errors": worker.errors[:5],
        }
    finally:
        drop(url, schema)


def spawn_latency(url: str, schema: str, samples: int) -> dict[str, Any]:
    """Spawn one job at a time into an idle worker; latency = claimed_at - created_at."""
    setup(url, schema)
    worker = RawWorker(url, schema, 8)
    worker.start()
    try:
        spawn = q(SPAWN, schema)
        with connect(url) as conn:
            time.sleep(0.2)
            for i in range(samples):
                conn.execute(spawn, (QUEUE, json.dumps({"x": i}), QUEUE))
                while completed(conn, schema) < i + 1:
                    time.sleep(0.001)
                time.sleep(0.005)
            rows = conn.execute(
                q(
                    "SELECT extract(epoch FROM claimed_at - created_at)::float8 "
                    "FROM {s}.jobs ORDER BY id",
                    schema,
                )
            ).fetchall()
        return summarize([r[0] for r in rows])
    finally:
        worker.stop()
        drop(url, schema)


def spawn_rate(url: str, schema: str, n_single: int, n_batch: int) -> dict[str, Any]:
    """Spawn INSERT (+NOTIFY) one by one (autocommit: one commit each), and a batch of
    n_batch in one transaction (pipelined executemany)."""
    setup(url, schema)
    try:
        spawn = q(SPAWN, schema)
        with connect(url) as conn:
            t0 = time.perf_counter()
            for i in range(n_single):
                conn.execute(spawn, (QUEUE, json.dumps({"x": i}), QUEUE))
            single = n_single / (time.perf_counter() - t0)
        with connect(url, autocommit=False) as conn:
            t0 = time.perf_counter()
            with conn.cursor() as cur:
                cur.executemany(
                    spawn, [(QUEUE, json.dumps({"x": i}), QUEUE) for i in range(n_batch)]
                )
            conn.commit()
            batch = n_batch / (time.perf_counter() - t0)
        return {"one_by_one_per_s": single, "batch_per_s": batch, "batch_size": n_batch}
    finally:
        drop(url, schema)


def insert_roundtrip(url: str, schema: str, samples: int) -> dict[str, Any]:
    """One raw checkpoint-shaped INSERT, autocommit (a commit and WAL flush each)."""
    setup(url, schema)
    try:
        stmt = q(INSERT_CHECKPOINT, schema)
        times = []
        with connect(url) as conn:
            for i in range(samples):
                t0 = time.perf_counter()
                conn.execute(stmt, (1, f"step{i}", json.dumps(i)))
                times.append(time.perf_counter() - t0)
        return summarize(times)
    finally:
        drop(url, schema)


def backlog(url: str, schema: str, pending: int, concurrency: int, window: float) -> dict[str, Any]:
    """Completions per second with `pending` jobs waiting (see `_util.backlog_rate`)."""
    setup(url, schema)
    try:
        preload(url, schema, pending)
        with connect(url) as conn:
            conn.execute(q("VACUUM ANALYZE {s}.jobs", schema))
            conn.execute("CHECKPOINT")  # the load's WAL, flushed before timing starts
        worker = RawWorker(url, schema, concurrency)
        started = database_clock(url)
        worker.start()
        time.sleep(window)
        worker.stop()
        return backlog_rate(url, q("{s}.jobs", schema).decode(), pending, started, window)
    finally:
        drop(url, schema)


def run_two_processes(
    url: str, schema: str, n: int, concurrency: int, timeout: float = 300
) -> dict[str, Any]:
    """Throughput with two raw worker processes, each at `concurrency`."""
    setup(url, schema)
    try:
        preload(url, schema, n)
        argv = [sys.executable, __file__, "worker", url, schema, str(concurrency)]
        workers = [WorkerProcess(argv) for _ in range(2)]
        try:
            for w in workers:
                w.wait_ready()
            t0 = time.perf_counter()
            for w in workers:
                w.send("go")
            done = wait_completed(url, schema, n, timeout)
            seconds = time.perf_counter() - t0
            reports = [w.stop() for w in workers]
        finally:
            for w in workers:
                w.kill()
        return two_process_result(n, concurrency, done, seconds, reports)
    finally:
        drop(url, schema)


def _worker_main(url: str, schema: str, concurrency: int) -> None:
    worker = RawWorker(url, schema, concurrency)
    print("READY", flush=True)
    for line in sys.stdin:
        if line.strip() == "go":
            worker.start()
        elif line.strip() == "stop":
            break
    worker.stop()
    print(json.dumps({"errors": worker.errors[:5]}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "worker":
        _worker_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit("usage: raw_ceiling.py worker URL SCHEMA CONCURRENCY")
