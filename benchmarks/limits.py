"""Scenarios about limits, each metered with `meter` (commits, WAL, server and client CPU
per task):

- `ceiling`: at one concurrency, the naive raw design (`raw_ceiling`), the best-effort
  one (`ceiling_best`, every lane split and both modes), pgbench running the same
  statement, and durable_trio's one-step drain, back to back on one server.
- `server_work`: durable_trio's one-step drain, row changes per task of each table
  (inserts, updates, HOT updates, deletes) from ``pg_stat_user_tables``.
- `scale`: 1, 2, 4 durable_trio worker processes on one queue.
- `retained`: one-step throughput with many finished tasks kept in the tables, and none.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import trio

import ceiling_best
import dt_bench
import durable_trio as dt
import meter
import raw_ceiling
from _util import WorkerProcess, connect, database_clock, wait_count
from dt_bench import QUEUE, Job, _options, _q, drop_schema, one_step, spawn_chunks

# -- the ceiling -----------------------------------------------------------------------


def _raw_metered(url: str, schema: str, n: int, run: Any, pm: int | None) -> dict[str, Any]:
    raw_ceiling.setup(url, schema)
    try:
        raw_ceiling.preload(url, schema, n)
        with connect(url) as conn:
            conn.execute(raw_ceiling.q("VACUUM ANALYZE {s}.jobs", schema))
        before = meter.snapshot(url, schema, pm)
        result = run()
        after = meter.snapshot(url, schema, pm)
        result["cost"] = meter.cost(
            url, before, after, result["completed_in_db"], result["seconds"]
        )
        return result
    finally:
        raw_ceiling.drop(url, schema)


def _naive(url: str, schema: str, n: int, c: int, timeout: float) -> dict[str, Any]:
    worker = raw_ceiling.RawWorker(url, schema, c)
    t0 = time.perf_counter()
    worker.start()
    done = raw_ceiling.wait_completed(url, schema, n, timeout)
    seconds = time.perf_counter() - t0
    worker.stop()
    return {"n": n, "completed_in_db": done, "seconds": seconds, "tasks_per_s": done / seconds}


async def _dt_spawn(url: str, schema: str, n: int) -> None:
    async with dt.Durable.connect(url, schema=schema, queue=QUEUE) as client:
        client.register(one_step)
        await spawn_chunks(client, one_step, n)


# Runs not finished yet, counted through the partial indexes that hold only those (a
# count of completed tasks would scan every retained one, every poll).
OUTSTANDING = (
    "SELECT (SELECT count(*) FROM {s}.runs WHERE state IN ('pending', 'sleeping'))"
    " + (SELECT count(*) FROM {s}.runs WHERE state = 'running')"
)
# Completed tasks created since a time (through tasks_created: the retained tasks are
# older, and counting them would scan millions of rows on the server's CPU bill).
COMPLETED = "SELECT count(*) FROM {s}.tasks WHERE created_at >= %s AND state = 'completed'"


async def _dt_drain(
    url: str, schema: str, n: int, c: int, timeout: float, since: Any
) -> dict[str, Any]:
    """One worker at `c` until no run is left unfinished; completions of the tasks
    created since `since` (the database's clock before their spawn) are counted."""
    async with dt.Durable.connect(url, schema=schema, queue=QUEUE, migrate=False) as client:
        client.register(one_step)
        async with trio.open_nursery() as nursery:
            worker = client.new_worker(_options(c))
            await nursery.start(worker.run)
            t0 = time.perf_counter()
            left = await trio.to_thread.run_sync(
                wait_outstanding, url, _q(OUTSTANDING, schema), timeout
            )
            seconds = time.perf_counter() - t0
            worker.shutdown()
    with connect(url) as conn:
        row = conn.execute(_q(COMPLETED, schema), (since,)).fetchone()
    done = int(row[0]) if row else 0
    return {
        "n": n,
        "completed_in_db": done,
        "seconds": seconds,
        "tasks_per_s": done / seconds,
        "unfinished": left,
    }


def wait_outstanding(url: str, query: bytes, timeout: float, poll: float = 0.02) -> int:
    deadline = time.monotonic() + timeout
    with connect(url) as conn:
        while True:
            row = conn.execute(query).fetchone()
            left = int(row[0]) if row else 0
            if left == 0 or time.monotonic() > deadline:
                return left
            time.sleep(poll)


def dt_metered(
    url: str, schema: str, n: int, c: int, timeout: float, pm: int | None
) -> dict[str, Any]:
    """durable_trio's one-step drain, spawned by a client that is closed before the first
    snapshot (so only the drain is counted), with the per-table row changes."""
    try:
        since = database_clock(url)
        trio.run(_dt_spawn, url, schema, n)
        before = meter.snapshot(url, schema, pm)
        result = trio.run(_dt_drain, url, schema, n, c, timeout, since)
        after = meter.snapshot(url, schema, pm)
        result["cost"] = meter.cost(
            url, before, after, result["completed_in_db"], result["seconds"]
        )
        result["tables"] = meter.table_work(before, after, result["completed_in_db"])
        result["index_bytes_per_task"] = meter.index_growth(
            before, after, result["completed_in_db"]
        )
        return result
    finally:
        drop_schema(url, schema)


def ceiling(
    url: str, schema: str, concurrency: int, n: int, window: float, timeout: float = 150
) -> dict[str, Any]:
    """Every design at one concurrency; `best` names the fastest raw one, and
    `durable_trio_fraction` is durable_trio's rate over it."""
    pm = meter.postmaster_pid(url)
    runs: dict[str, Any] = {}

    def record(key: str, fn: Any) -> None:
        try:
            runs[key] = fn()
        except Exception as ex:  # noqa: BLE001 - recorded, the others still run
            runs[key] = {"error": str(ex)[:1500]}

    record(
        "naive",
        lambda: _raw_metered(
            url, schema, n, lambda: _naive(url, schema, n, concurrency, timeout), pm
        ),
    )
    # the batched designs drain n in a fraction of a second at high concurrency: 4 n
    many = 4 * n
    for lanes, batch in ceiling_best.lane_plans(concurrency):
        for mode in ceiling_best.MODES:
            record(
                f"{mode} {lanes}x{batch}",
                lambda lanes=lanes, batch=batch, mode=mode: _raw_metered(
                    url,
                    schema,
                    many,
                    lambda: ceiling_best.drain(url, schema, many, lanes, batch, mode),
                    pm,
                ),
            )
        if ceiling_best.pgbench_path() is not None:
            # more than can finish in the window: the rate is read from timestamps
            load = max(many, int(window * 40_000))
            record(
                f"pgbench {lanes}x{batch}",
                lambda lanes=lanes, batch=batch, load=load: _raw_metered(
                    url,
                    schema,
                    load,
                    lambda: ceiling_best.pgbench(url, schema, lanes, batch, window),
                    pm,
                ),
            )
    record("durable_trio", lambda: dt_metered(url, schema, n, concurrency, timeout, pm))
    rates = {
        k: v["tasks_per_s"]
        for k, v in runs.items()
        if k not in ("naive", "durable_trio") and "tasks_per_s" in v
    }
    best = max(rates, key=lambda k: rates[k]) if rates else None
    out: dict[str, Any] = {"concurrency": concurrency, "runs": runs, "best": best}
    dt_rate = runs["durable_trio"].get("tasks_per_s")
    if best is not None and dt_rate:
        out["best_tasks_per_s"] = rates[best]
        out["durable_trio_fraction"] = dt_rate / rates[best]
        naive = runs["naive"].get("tasks_per_s")
        if naive:
            out["durable_trio_over_naive"] = dt_rate / naive
    return out


# -- server work per task --------------------------------------------------------------


def index_definitions(url: str, schema: str) -> dict[str, list[str]]:
    """Each durable table's index definitions (what an update must keep in step)."""

    async def make() -> None:
        async with dt.Durable.connect(url, schema=schema, queue=QUEUE):
            pass

    trio.run(make)
    try:
        with connect(url) as conn:
            rows = conn.execute(
                "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = %s "
                "ORDER BY tablename, indexname",
                (schema,),
            ).fetchall()
    finally:
        drop_schema(url, schema)
    out: dict[str, list[str]] = {}
    for table, definition in rows:
        out.setdefault(table, []).append(definition.replace(f"{schema}.", ""))
    return out


def server_work(
    url: str, schema: str, concurrencies: list[int], n: int, timeout: float = 150
) -> dict[str, Any]:
    """durable_trio's one-step drain at each concurrency: per-task row changes of every
    table and the run's cost, plus the tables' index definitions."""
    pm = meter.postmaster_pid(url)
    out: dict[str, Any] = {"indexes": index_definitions(url, schema)}
    for c in concurrencies:
        out[str(c)] = dt_metered(url, schema, n, c, timeout, pm)
    return out


# -- worker processes ------------------------------------------------------------------


def processes(
    url: str, schema: str, counts: list[int], n: int, concurrency: int, timeout: float = 300
) -> dict[str, Any]:
    """durable_trio one-step throughput with k worker processes at `concurrency` each,
    for each k in `counts`; per-core figures over this machine's CPUs."""
    pm = meter.postmaster_pid(url)
    cpus = os.cpu_count() or 1
    out: dict[str, Any] = {"cpus": cpus, "concurrency_each": concurrency}
    for k in counts:
        try:
            trio.run(_dt_spawn, url, schema, n)
            argv = [sys.executable, dt_bench.__file__, "worker", url, schema, str(concurrency)]
            workers = [WorkerProcess([*argv, "one_step"]) for _ in range(k)]
            try:
                for w in workers:
                    w.wait_ready()
                count = _q("SELECT count(*) FROM {s}.tasks WHERE state = 'completed'", schema)
                before = meter.snapshot(url, schema, pm, settle=False)
                t0 = time.perf_counter()
                for w in workers:
                    w.send("go")
                done = wait_count(url, count, n, timeout)
                seconds = time.perf_counter() - t0
                for w in workers:
                    w.stop()
            finally:
                for w in workers:
                    w.kill()
            after = meter.snapshot(url, schema, pm)
            rate = done / seconds
            out[str(k)] = {
                "processes": k,
                "n": n,
                "completed_in_db": done,
                "seconds": seconds,
                "tasks_per_s": rate,
                "tasks_per_s_per_core": rate / cpus,
                "cost": meter.cost(url, before, after, done, seconds),
            }
        except Exception as ex:  # noqa: BLE001 - recorded, the other counts still run
            out[str(k)] = {"error": str(ex)[:1500]}
        finally:
            drop_schema(url, schema)
    return out


# -- finished tasks retained -----------------------------------------------------------


async def _finished_template(url: str, schema: str) -> tuple[Any, Any]:
    async with dt.Durable.connect(url, schema=schema, queue=QUEUE) as client:
        client.register(one_step)
        async with client.worker(_options(1)):
            spawned = await client.spawn(one_step, Job(0))
            await client.wait_result(one_step, spawned.task_id, timeout=60)
    return spawned.task_id, spawned.run_id


def _columns(conn: Any, schema: str, table: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (schema, table),
        )
    ]


def load_finished(url: str, schema: str, n: int, deadline: float) -> dict[str, Any]:
    """n completed one-step tasks (task, run and checkpoint rows), cloned in SQL from one
    task run to completion through the public API, with fresh time-ordered ids. Stops
    early at `deadline` (a monotonic time) and says how many it loaded."""
    t0 = time.perf_counter()
    task_id, run_id = trio.run(_finished_template, url, schema)
    overrides = {
        "tasks": {
            "task_id": "ids.tid",
            "last_run_id": "ids.rid",
            "root_task_id": "ids.tid",
            "params": "jsonb_build_object('x', ids.g)",
        },
        "runs": {"run_id": "ids.rid", "task_id": "ids.tid"},
        "checkpoints": {"task_id": "ids.tid", "run_id": "ids.rid"},
    }
    keys = {"tasks": "task_id", "runs": "run_id", "checkpoints": "task_id"}
    base_ms = int(time.time() * 1000) - n // 50 - 10_000_000
    uuid7 = (
        "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing "
        f"substring(int8send({base_ms}::bigint + (g + %(offset)s) / 50) from 3) "
        "from 1 for 6), 52, 1), 53, 1), 'hex')::uuid"
    )
    with connect(url) as conn:
        inserts = []
        for table, replace in overrides.items():
            cols = _columns(conn, schema, table)
            names = ", ".join(f'"{c}"' for c in cols)
            exprs = ", ".join(replace.get(c, f'x."{c}"') for c in cols)
            source = "%(task)s" if keys[table] == "task_id" else "%(run)s"
            inserts.append(
                f"ins_{table} AS (INSERT INTO {{s}}.{table} ({names}) SELECT {exprs} "
                f"FROM {{s}}.{table} x, ids WHERE x.{keys[table]} = {source})"
            )
        clone = (
            f"WITH ids AS (SELECT g + %(offset)s AS g, {uuid7} AS tid, {uuid7} AS rid "
            "FROM generate_series(1, %(n)s) g), " + ", ".join(inserts) + " SELECT 1"
        )
        stmt = _q(clone, schema)
        done = 1
        while done < n and time.monotonic() < deadline:
            k = min(200_000, n - done)
            conn.execute(stmt, {"n": k, "offset": done, "task": task_id, "run": run_id})
            done += k
        load_s = time.perf_counter() - t0
        for table in ("tasks", "runs", "checkpoints"):
            conn.execute(_q(f"VACUUM ANALYZE {{s}}.{table}", schema))
        conn.execute("CHECKPOINT")
        size = conn.execute(
            "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c "
            "JOIN pg_namespace s ON s.oid = c.relnamespace "
            "WHERE s.nspname = %s AND c.relkind = 'r'",
            (schema,),
        ).fetchone()
    return {
        "retained": done,
        "asked": n,
        "load_seconds": load_s,
        "rows_per_s": done / load_s,
        "bytes_on_disk": int(size[0]) if size and size[0] else 0,
    }


def retained(
    url: str,
    schema: str,
    sizes: list[int],
    n: int,
    concurrency: int,
    load_budget: float,
    timeout: float = 150,
) -> dict[str, Any]:
    """One-step drain of n tasks at `concurrency` with each number of finished tasks kept
    in the tables (0: a fresh schema). Loading stops at `load_budget` seconds."""
    pm = meter.postmaster_pid(url)
    out: dict[str, Any] = {}
    for size in sizes:
        try:
            load: dict[str, Any] = {"retained": 0}
            if size:
                load = load_finished(url, schema, size, time.monotonic() + load_budget)
            since = database_clock(url)
            trio.run(_dt_spawn, url, schema, n)
            before = meter.snapshot(url, schema, pm)
            result = trio.run(_dt_drain, url, schema, n, concurrency, timeout, since)
            after = meter.snapshot(url, schema, pm)
            result["cost"] = meter.cost(
                url, before, after, result["completed_in_db"], result["seconds"]
            )
            result["load"] = load
            out[str(size)] = result
        except Exception as ex:  # noqa: BLE001 - recorded, the other sizes still run
            out[str(size)] = {"error": str(ex)[:1500]}
        finally:
            drop_schema(url, schema)
    return out
