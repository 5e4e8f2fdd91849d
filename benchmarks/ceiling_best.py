"""The best-effort raw-SQL ceiling: the same one-step task model and durability as
`raw_ceiling` (claim a task, write its one checkpoint, complete it; fsync and
synchronous_commit on), with everything a hand-written worker can do to go faster.

Concurrency c (tasks in flight at once) is split into L *lanes*, each a thread with its
own connection holding up to b = c / L tasks. A lane's loop is one round trip and one
commit per batch: the checkpoints and fenced completions of the batch it holds and the
claim of the next batch (``FOR UPDATE SKIP LOCKED LIMIT b``) go together, as

- ``cte``: one prepared statement (data-modifying CTEs), autocommit; or
- ``pipeline``: three prepared statements and the COMMIT in one psycopg pipeline.

The step runs in Python between claim and write (params decoded, x + 1), as a worker's
would. ``pgbench`` runs the same statement with the step done in SQL: the server-side
limit, with no Python client in the way. Both run on `raw_ceiling`'s tables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from psycopg import sql

import raw_ceiling
from _util import connect
from raw_ceiling import QUEUE, q

# Completes the batch held (fenced on the worker and state), writes its checkpoints
# (only for the rows the fence let through), claims the next batch. The claim's subquery
# sees the rows as they were at the statement's start: the held batch is 'running', so
# it is never picked again.
STEP = """
WITH held AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(vals)s::bigint[]) AS h(id, val)
), done AS (
    UPDATE {s}.jobs j SET state = 'completed', finished_at = clock_timestamp(),
        result = to_jsonb(held.val)
    FROM held WHERE j.id = held.id AND j.worker = %(w)s AND j.state = 'running'
    RETURNING j.id, j.result
), saved AS (
    INSERT INTO {s}.checkpoints (job_id, name, value) SELECT id, 'work', result FROM done
)
UPDATE {s}.jobs SET state = 'running', worker = %(w)s, attempts = attempts + 1,
    claimed_at = clock_timestamp(), lease_expires_at = clock_timestamp() + interval '30 s'
WHERE id IN (
    SELECT id FROM {s}.jobs WHERE queue = %(q)s AND state = 'pending'
    ORDER BY id LIMIT %(n)s FOR UPDATE SKIP LOCKED)
RETURNING id, params
"""
# The pipeline form: the same three writes as separate statements, one transaction.
P_CHECKPOINT = """
INSERT INTO {s}.checkpoints (job_id, name, value)
SELECT j.id, 'work', to_jsonb(h.val)
FROM unnest(%(ids)s::bigint[], %(vals)s::bigint[]) AS h(id, val)
JOIN {s}.jobs j ON j.id = h.id AND j.worker = %(w)s AND j.state = 'running'
"""
P_COMPLETE = """
UPDATE {s}.jobs j SET state = 'completed', finished_at = clock_timestamp(),
    result = to_jsonb(h.val)
FROM unnest(%(ids)s::bigint[], %(vals)s::bigint[]) AS h(id, val)
WHERE j.id = h.id AND j.worker = %(w)s AND j.state = 'running'
"""
P_CLAIM = """
UPDATE {s}.jobs SET state = 'running', worker = %(w)s, attempts = attempts + 1,
    claimed_at = clock_timestamp(), lease_expires_at = clock_timestamp() + interval '30 s'
WHERE id IN (
    SELECT id FROM {s}.jobs WHERE queue = %(q)s AND state = 'pending'
    ORDER BY id LIMIT %(n)s FOR UPDATE SKIP LOCKED)
RETURNING id, params
"""
MODES = ("cte", "pipeline")


def _array(values: list[int]) -> str:
    # an array literal: one parameter, no per-element adaptation in psycopg
    return "{" + ",".join(map(str, values)) + "}"


class Lane(threading.Thread):
    """One connection, up to `batch` tasks in hand; runs until a claim comes back empty
    with nothing held (the queue was preloaded, so empty means drained)."""

    def __init__(self, url: str, schema: str, batch: int, mode: str, name: str) -> None:
        super().__init__(daemon=True)
        self.batch = batch
        self.mode = mode
        self.worker = name
        self.conn = connect(url, autocommit=(mode == "cte"))
        self.step = q(STEP, schema)
        self.parts = [q(t, schema) for t in (P_CHECKPOINT, P_COMPLETE, P_CLAIM)]
        self.done = 0
        self.error: str | None = None

    def _round(self, ids: list[int], vals: list[int]) -> list[Any]:
        params = {
            "ids": _array(ids),
            "vals": _array(vals),
            "w": self.worker,
            "q": QUEUE,
            "n": self.batch,
        }
        if self.mode == "cte":
            return self.conn.execute(self.step, params, prepare=True).fetchall()
        with self.conn.pipeline():
            if ids:
                self.conn.execute(self.parts[0], params, prepare=True)
                self.conn.execute(self.parts[1], params, prepare=True)
            cur = self.conn.execute(self.parts[2], params, prepare=True)
            self.conn.commit()
        return cur.fetchall()

    def run(self) -> None:
        ids: list[int] = []
        vals: list[int] = []
        try:
            while True:
                rows = self._round(ids, vals)
                self.done += len(ids)
                if not rows:
                    return
                ids = [r[0] for r in rows]
                vals = [r[1]["x"] + 1 for r in rows]  # the step
        except Exception as ex:  # noqa: BLE001 - reported by the caller
            self.error = repr(ex)
        finally:
            self.conn.close()


def lane_plans(concurrency: int) -> list[tuple[int, int]]:
    """(lanes, batch) splits of `concurrency` to try: 1, 2 and 4 lanes (few lanes, big
    batches: each commit carries many tasks) and one task per lane (c lanes: the most
    commits in flight), where they divide it."""
    lanes = sorted({n for n in (1, 2, 4, concurrency) if n <= concurrency})
    return [(n, concurrency // n) for n in lanes if concurrency % n == 0]


def drain(url: str, schema: str, n: int, lanes: int, batch: int, mode: str) -> dict[str, Any]:
    """n preloaded jobs drained by `lanes` lanes of `batch`; timed from the lanes' start
    to the last lane's end, completions counted in the database."""
    workers = [Lane(url, schema, batch, mode, f"best-{os.getpid()}-{i}") for i in range(lanes)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - t0
    with connect(url) as conn:
        done = raw_ceiling.completed(conn, schema)
    errors = [w.error for w in workers if w.error]
    return {
        "n": n,
        "completed_in_db": done,
        "seconds": seconds,
        "tasks_per_s": done / seconds,
        "lanes": lanes,
        "batch": batch,
        "mode": mode,
        "errors": errors[:3],
    }


# -- pgbench ---------------------------------------------------------------------------

# The STEP statement with the step in SQL (x + 1 from the job's params) and the held ids
# carried from one pgbench transaction to the next in the client's variable `ids`.
PGBENCH_SCRIPT = """
WITH done AS (
    UPDATE {s}.jobs j SET state = 'completed', finished_at = clock_timestamp(),
        result = to_jsonb((j.params->>'x')::bigint + 1)
    WHERE j.id = ANY (:ids::bigint[]) AND j.worker = :client_id::text
      AND j.state = 'running'
    RETURNING j.id, j.result
), saved AS (
    INSERT INTO {s}.checkpoints (job_id, name, value) SELECT id, 'work', result FROM done
), claimed AS (
    UPDATE {s}.jobs SET state = 'running', worker = :client_id::text,
        attempts = attempts + 1, claimed_at = clock_timestamp(),
        lease_expires_at = clock_timestamp() + interval '30 s'
    WHERE id IN (
        SELECT id FROM {s}.jobs WHERE queue = 'bench' AND state = 'pending'
        ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED)
    RETURNING id
)
SELECT coalesce(array_agg(id), '{{}}')::text AS ids FROM claimed \\gset
"""


def pgbench_path() -> str | None:
    try:
        bindir = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except OSError:
        bindir = ""
    candidate = Path(bindir) / "pgbench" if bindir else None
    if candidate is not None and candidate.exists():
        return str(candidate)
    return shutil.which("pgbench")


def pgbench(url: str, schema: str, clients: int, batch: int, seconds: float) -> dict[str, Any]:
    """pgbench's clients running the one-statement batch step for `seconds` on a
    preloaded queue (the caller preloads more than can finish); the rate is the completed
    jobs over first claim to last completion (the database's clock)."""
    exe = pgbench_path()
    if exe is None:
        raise RuntimeError("pgbench not found (pg_config --bindir, PATH)")
    schema_sql = sql.Identifier(schema).as_string(None)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "step.sql"
        script.write_text(PGBENCH_SCRIPT.format(s=schema_sql))
        argv = [
            exe,
            "-n",
            "-M",
            "prepared",
            "-f",
            str(script),
            "-c",
            str(clients),
            "-j",
            str(min(clients, os.cpu_count() or 1)),
            "-T",
            str(max(1, round(seconds))),
            "-D",
            "ids={}",
            "-D",
            f"batch={batch}",
            url,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed: {done.stderr[-1500:]}")
    with connect(url) as conn:
        row = conn.execute(
            q(
                "SELECT count(*), extract(epoch FROM max(finished_at) - min(claimed_at))"
                "::float8 FROM {s}.jobs WHERE state = 'completed'",
                schema,
            )
        ).fetchone()
        left = conn.execute(
            q("SELECT count(*) FROM {s}.jobs WHERE state = 'pending'", schema)
        ).fetchone()
    assert row is not None
    assert left is not None
    completed, span = int(row[0]), float(row[1] or 0.0)
    return {
        "completed_in_db": completed,
        "seconds": span,
        "tasks_per_s": completed / span if span else 0.0,
        "lanes": clients,
        "batch": batch,
        "mode": "pgbench",
        "ran_dry": int(left[0]) == 0,
    }
