"""durable_trio scenarios. Every count of finished work comes from the database.

Also runnable as a worker subprocess (``python dt_bench.py worker URL SCHEMA C TASK`` and
``python dt_bench.py rss-worker URL SCHEMA C``): see `_util.WorkerProcess` for the protocol.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import attrs
import trio
from psycopg import sql

import durable_trio as dt
import raw_ceiling
from _util import (
    WorkerProcess,
    backlog_rate,
    connect,
    database_clock,
    rss_kib,
    summarize,
    two_process_result,
    wait_count,
)
from durable_trio._db import connect as trio_connect
from durable_trio.testing import run_until_idle

QUEUE = "bench"


@attrs.frozen
class Job:
    x: int


@attrs.frozen
class Steps:
    k: int


def _inc(x: int) -> int:
    return x + 1


def _now() -> float:
    return time.time()


@dt.task("one_step")
async def one_step(ctx: dt.TaskContext, p: Job) -> int:
    return await ctx.step("work", _inc, p.x)


@dt.task("zero_step")
async def zero_step(ctx: dt.TaskContext, p: Job) -> int:
    return p.x + 1


@dt.task("many_steps")
async def many_steps(ctx: dt.TaskContext, p: Steps) -> list[float]:
    """Times each ctx.step round trip (the step body itself is trivial)."""
    times = []
    for i in range(p.k):
        t0 = time.perf_counter()
        await ctx.step("s", _inc, i)
        times.append(time.perf_counter() - t0)
    return times


@dt.task("waiter")
async def waiter(ctx: dt.TaskContext, p: Job) -> float:
    await ctx.await_event(f"go-{p.x}")
    return await ctx.step("resumed", _now)


@dt.task("child")
async def child(ctx: dt.TaskContext, p: Job) -> int:
    return p.x


@dt.task("parent")
async def parent(ctx: dt.TaskContext, p: Job) -> int:
    handles = [await ctx.spawn("c", child, Job(i)) for i in range(p.x)]
    total = 0
    for handle in handles:
        total += await ctx.join("j", handle)
    return total


async def _sleep_long() -> int:
    await trio.sleep(3600)
    return 0


@dt.task("sleeper")
async def sleeper(ctx: dt.TaskContext, p: Job) -> int:
    return await ctx.step("nap", _sleep_long)


TASKS: dict[str, dt.TaskDefinition[Any, Any]] = {
    t.name: t for t in (one_step, zero_step, many_steps, waiter, child, parent, sleeper)
}


# -- helpers ----------------------------------------------------------------------------


def drop_schema(url: str, schema: str) -> None:
    with connect(url) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _q(text: str, schema: str) -> bytes:
    return sql.SQL(text).format(s=sql.Identifier(schema)).as_string(None).encode()


class Counter:
    """Counts tasks in a state, on its own trio-native connection."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self._conn: Any = None

    async def __aenter__(self) -> Counter:
        self._conn = await trio_connect(self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._conn.close()

    async def count(self, state: str = "completed", table: str = "tasks") -> int:
        cur = await self._conn.execute(
            _q("SELECT count(*) AS n FROM {s}." + table + " WHERE state = %s", self.schema),
            (state,),
        )
        row = await cur.fetchone()
        return int(row["n"])

    async def wait(
        self, n: int, *, state: str = "completed", timeout: float = 300, poll: float = 0.02
    ) -> int:
        with trio.move_on_after(timeout):
            while True:
                done = await self.count(state)
                if done >= n:
                    return done
                await trio.sleep(poll)
        return await self.count(state)

    async def values(self, query: str) -> list[Any]:
        cur = await self._conn.execute(_q(query, self.schema))
        return [next(iter(row.values())) for row in await cur.fetchall()]


async def spawn_chunks(client: dt.Durable, task: Any, n: int, chunk: int = 5000) -> float:
    """spawn_many in chunks; returns tasks per second."""
    t0 = time.perf_counter()
    done = 0
    while done < n:
        k = min(chunk, n - done)
        await client.spawn_many(task, [Job(done + i) for i in range(k)])
        done += k
    return n / (time.perf_counter() - t0)


def _options(concurrency: int, **kw: Any) -> dt.WorkerOptions:
    return dt.WorkerOptions(concurrency=concurrency, worker_id=f"bench-{concurrency}", **kw)


# -- scenarios --------------------------------------------------------------------------


async def drain(
    url: str,
    schema: str,
    task_name: str,
    n: int,
    concurrency: int,
    *,
    prefetch: int = 0,
    timeout: float = 300,
    hooks: dt.Hooks | None = None,
) -> dict[str, Any]:
    """Throughput: n pending tasks, one in-process worker at `concurrency` (claiming
    `prefetch` runs ahead); timed from the worker's start until the database counts n
    completed tasks."""
    task = TASKS[task_name]
    try:
        async with dt.Durable.connect(url, schema=schema, queue=QUEUE, hooks=hooks) as client:
            client.register(task)
            await spawn_chunks(client, task, n)
            async with Counter(url, schema) as counter, trio.open_nursery() as nursery:
                worker = client.new_worker(_options(concurrency, prefetch=prefetch))
                await nursery.start(worker.run)
                t0 = time.perf_counter()
                done = await counter.wait(n, timeout=timeout)
                seconds = time.perf_counter() - t0
                worker.shutdown()
        return {"n": n, "completed_in_db": done, "seconds": seconds, "tasks_per_s": done / seconds}
    finally:
        drop_schema(url, schema)


async def otel_overhead(
    url: str, schema: str, n: int, concurrency: int, rounds: int, *, timeout: float = 300
) -> dict[str, Any]:
    """One-step throughput with durable_trio.contrib.opentelemetry's hooks (SDK providers,
    spans batched to an in-memory exporter, an in-memory metric reader) against none, and
    with the same hooks under a 10% sampler (``ParentBased(TraceIdRatioBased(0.1))``, a
    typical production setting: metrics exact, most traces' spans not recorded). Each
    round drains once per side, in an order that rotates, so that drift on a shared
    machine hits every side alike. The ratios are of the medians."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from durable_trio.contrib.opentelemetry import otel_hooks

    sides = ("off", "on", "sampled")
    rates: dict[str, list[float]] = {side: [] for side in sides}
    spans = dict.fromkeys(sides, 0)
    for i in range(rounds):
        for side in sides[i % 3 :] + sides[: i % 3]:
            hooks = exporter = tracing = None
            if side != "off":
                exporter = InMemorySpanExporter()
                sampler = ParentBased(TraceIdRatioBased(0.1)) if side == "sampled" else None
                tracing = TracerProvider(sampler=sampler) if sampler else TracerProvider()
                tracing.add_span_processor(BatchSpanProcessor(exporter))
                meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
                hooks = otel_hooks(tracer_provider=tracing, meter_provider=meters)
            cell = await drain(
                url,
                f"{schema}_{i}_{side}",
                "one_step",
                n,
                concurrency,
                timeout=timeout,
                hooks=hooks,
            )
            rates[side].append(cell["tasks_per_s"])
            if tracing is not None and exporter is not None:
                tracing.force_flush()
                spans[side] += len(exporter.get_finished_spans())
                tracing.shutdown()
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    sampled = statistics.median(rates["sampled"])
    return {
        "n": n,
        "concurrency": concurrency,
        "rounds": rounds,
        "off_tasks_per_s": rates["off"],
        "on_tasks_per_s": rates["on"],
        "sampled_tasks_per_s": rates["sampled"],
        "off_median": off,
        "on_median": on,
        "sampled_median": sampled,
        "ratio": on / off,
        "sampled_ratio": sampled / off,
        "spans_exported": spans["on"],  # run and step spans of every hooked task: they were on
        "sampled_spans_exported": spans["sampled"],
    }


async def spawn_latency(
    url: str, schema: str, samples: int, *, notify: bool = True
) -> dict[str, Any]:
    """Spawn one task at a time into an idle worker and wait for it to finish; latency is
    tasks.first_started_at - tasks.created_at (both the database's clock). With
    notify=False the worker ignores notifications: it finds work by polling only
    (poll_interval default, 1 s)."""
    try:
        async with dt.Durable.connect(url, schema=schema, queue=QUEUE) as client:
            client.register(one_step)
            async with Counter(url, schema) as counter, trio.open_nursery() as nursery:
                worker = client.new_worker(_options(8))
                if not notify:
                    worker._on_notify = lambda channel, payload: None  # type: ignore[method-assign]
                await nursery.start(worker.run)
                await trio.sleep(0.2)
                for i in range(samples):
                    await client.spawn(one_step, Job(i))
                    await counter.wait(i + 1, poll=0.001)
                    await trio.sleep(0.005)
                worker.shutdown()
                values = await counter.values(
                    "SELECT extract(epoch FROM first_started_at - created_at)::float8 "
                    "FROM {s}.tasks ORDER BY created_at"
                )
        return summarize(values)
    finally:
        drop_schema(url, schema)


async def emit_latency(url: str, schema: str, samples: int) -> dict[str, Any]:
    """Tasks suspended in await_event; emit from the client, one at a time; latency is
    from just before emit_event() to the first step after the wait (wall clock)."""
    try:
        async with dt.Durable.connect(url, schema=schema, queue=QUEUE) as client:
            client.register(waiter)
            spawned = [(await client.spawn(waiter, Job(i))).task_id for i in range(samples)]
            latencies = []
            async with Counter(url, schema) as counter, trio.open_nursery() as nursery:
                worker = client.new_worker(_options(8))
                await nursery.start(worker.run)
                await counter.wait(samples, state="sleeping")
                await trio.sleep(0.2)
                for i, task_id in enumerate(spawned):
                    t_emit = time.time()
                    await client.emit_event(f"go-{i}", None)
                    resumed = await client.wait_result(waiter, task_id, timeout=60)
                    latencies.append(resumed - t_emit)
                    await trio.sleep(0.005)
                worker.shutdown()
        return summarize(latencies)
    finally:
        drop_schema(url, schema)


async def fanout(url: str, schema: str, children: int, concurrency: int = 32) -> dict[str, Any]:
    """One parent spawns `children` children (ctx.spawn) and joins each; wall time from the
    parent's spawn to its completion."""
    try:
        async with dt.Durable.connect(url, schema=schema, queue=QUEUE) as client:
            client.register(parent, child)
            async with trio.open_nursery() as nursery:
                worker = client.new_worker(_options(concurrency))
                await nursery.start(worker.run)
                t0 = time.perf_counter()
                spawned = await client.spawn(parent, Job(children))
                total = await client.wait_result(parent, spawned.task_id, timeout=900)
                seconds = time.perf_counter() - t0
                worker.shutdown()
            assert total == sum(range(children)), total
        return {
            "children": children,
            "seconds": seconds,
            "children_per_s": children / seconds,
        }
    finally:
        drop_schema(url, schema)


async def checkpoint_latency(url: str, schema: str, steps: int) -> dict[str, Any]:
    """ctx.step round trips, timed inside one task (nothing else running)."""
    try:
        async with dt.Durable.connect(url, schema=schema, queue=QUEUE) as client:
            client.register(many_steps)
            async with client.worker(_options(1)):
                spawned = await client.spawn(many_steps, Steps(steps))
                times = await client.wait_result(many_steps, spawned.task_id, timeout=600)
        return summarize(times)
    finally:
        drop_schema(url, schema)


async def insert_roundtrip_trio(url: str, schema: str, samples: int) -> dict[str, Any]:
    """raw_ceiling.insert_roundtrip's INSERT, on the same table, but sent through the
    connection class durable_trio itself uses (psycopg's async API driven by trio's I/O
    waits): the part of a ctx.step round trip that is the async client, not the fence."""
    raw_ceiling.setup(url, schema)
    conn = await trio_connect(url)
    try:
        stmt = raw_ceiling.q(raw_ceiling.INSERT_CHECKPOINT, schema)
        times = []
        for i in range(samples):
            t0 = time.perf_counter()
            await conn.execute(stmt, (1, f"step{i}", json.dumps(i)))
            times.append(time.perf_counter() - t0)
        return summarize(times)
    finally:
        await conn.close()
        raw_ceiling.drop(url, schema)


async def spawn_rate(url: str, schema: str, n_single: int, n_batch: int) -> dict[str, Any]:
    """client.spawn one by one vs one client.spawn_many of n_batch."""
    try:
        async with dt.Durable.connect(url, schema=schema, queue=QUEUE) as client:
            client.register(one_step)
            t0 = time.perf_counter()
            for i in range(n_single):
                await client.spawn(one_step, Job(i))
            single = n_single / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            await client.spawn_many(one_step, [Job(i) for i in range(n_batch)])
            batch = n_batch / (time.perf_counter() - t0)
        return {"one_by_one_per_s": single, "batch_per_s": batch, "batch_size": n_batch}
    finally:
        drop_schema(url, schema)


def _columns(conn: Any, schema: str, table: str, replace: dict[str, str]) -> tuple[str, str]:
    """A table's column list and the SELECT list copying row `x` with `replace` applied."""
    cols = [
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (schema, table),
        )
    ]
    ident = [sql.Identifier(c).as_string(None) for c in cols]
    exprs = [replace.get(c, "x." + i) for c, i in zip(cols, ident, strict=True)]
    return ", ".join(ident), ", ".join(exprs)


def _clone(
    url: str, schema: str, task_id: Any, run_id: Any, n: int, *, base_ms: int, shift: str = ""
) -> None:
    """n copies of a task with its (one) run and its checkpoints, made in SQL: fresh ids
    and params, timestamps moved by `shift` (e.g. "- interval '2 days'"), every other
    column copied, so the rows stay whatever shape the current migrations give them.
    Ids are time-ordered like the uuid7s real spawns get (a random-uuid backlog would
    scatter index pages): 48-bit millisecond prefix from `base_ms`, advancing one
    millisecond per 50 rows, version 7 bits, random rest."""
    moved = {c: f"x.{c} {shift}" for c in ("created_at", "finished_at")} if shift else {}
    overrides = {
        "tasks": {
            "task_id": "ids.tid",
            "last_run_id": "ids.rid",
            "root_task_id": "ids.tid",
            "params": "jsonb_build_object('x', ids.g)",
            **moved,
            **({"first_started_at": f"x.first_started_at {shift}"} if shift else {}),
        },
        "runs": {
            "run_id": "ids.rid",
            "task_id": "ids.tid",
            **moved,
            **({"claimed_at": f"x.claimed_at {shift}"} if shift else {}),
        },
        "checkpoints": {
            "task_id": "ids.tid",
            "run_id": "ids.rid",
            **({"created_at": f"x.created_at {shift}"} if shift else {}),
        },
    }
    uuid7 = (
        "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing "
        f"substring(int8send({base_ms}::bigint + (g + %(offset)s) / 50) from 3) "
        "from 1 for 6), "
        "52, 1), 53, 1), 'hex')::uuid"
    )
    with connect(url) as conn:
        cols = {t: _columns(conn, schema, t, r) for t, r in overrides.items()}
        clone = f"""
        WITH ids AS (
            SELECT g + %(offset)s AS g, {uuid7} AS tid, {uuid7} AS rid
            FROM generate_series(1, %(n)s) g
        ), new_tasks AS (
            INSERT INTO {{s}}.tasks ({cols["tasks"][0]})
            SELECT {cols["tasks"][1]} FROM {{s}}.tasks x, ids WHERE x.task_id = %(task)s
        ), new_runs AS (
            INSERT INTO {{s}}.runs ({cols["runs"][0]})
            SELECT {cols["runs"][1]} FROM {{s}}.runs x, ids WHERE x.run_id = %(run)s
        )
        INSERT INTO {{s}}.checkpoints ({cols["checkpoints"][0]})
        SELECT {cols["checkpoints"][1]} FROM {{s}}.checkpoints x, ids
        WHERE x.task_id = %(task)s
        """
        done = 1
        while done < n:
            k = min(100_000, n - done)
            params = {"n": k, "offset": done, "task": task_id, "run": run_id}
            conn.execute(_q(clone, schema), params)
            done += k


async def preload_clones(client: dt.Durable, url: str, schema: str, n: int) -> float:
    """n pending one_step tasks, fast: one real spawn through the public API, then n - 1
    copies of its rows (`_clone`). Returns rows per second."""
    t0 = time.perf_counter()
    template = await client.spawn(one_step, Job(0))
    base_ms = int(time.time() * 1000) - n // 50 - 1000
    _clone(url, schema, template.task_id, template.run_id, n, base_ms=base_ms)
    return n / (time.perf_counter() - t0)


async def backlog(
    url: str, schema: str, pending: int, concurrency: int, window: float
) -> dict[str, Any]:
    """Completions per second while `pending` tasks wait (see `_util.backlog_rate`)."""
    try:
        async with dt.Durable.connect(url, schema=schema, queue=QUEUE) as client:
            client.register(one_step)
            preload_rate = await preload_clones(client, url, schema, pending)
            with connect(url) as conn:
                conn.execute(_q("VACUUM ANALYZE {s}.tasks", schema))
                conn.execute(_q("VACUUM ANALYZE {s}.runs", schema))
                conn.execute("CHECKPOINT")  # the load's WAL, flushed before timing starts
            with trio.CancelScope() as crash:
                async with trio.open_nursery() as nursery:
                    worker = client.new_worker(_options(concurrency))
                    started = database_clock(url)
                    await nursery.start(worker.run)
                    await trio.sleep(window)
                    crash.cancel()  # stop at once; in-flight runs are simply abandoned
        result = backlog_rate(url, _q("{s}.tasks", schema).decode(), pending, started, window)
        return {**result, "preload_rows_per_s": preload_rate}
    finally:
        drop_schema(url, schema)


SPREAD_MS = 10  # the preloaded finished tasks end this far apart, oldest first


async def retention(
    url: str,
    schema: str,
    finished: int,
    pending: int,
    concurrency: int,
    *,
    window: float,
    batch: int,
    slices: int,
    duties: tuple[float, ...],
) -> dict[str, Any]:
    """Drain rate while `Durable.cleanup` removes `finished` old one_step tasks (each with
    its run and checkpoint), against the drain rate without it, measured back to back.

    One worker drains a backlog of `pending` one_step tasks the whole time. The finished
    tasks ended `SPREAD_MS` apart, so a cut-off removes an exact slice of them: beside
    the worker, `slices` calls of `Durable.cleanup(finished_before=cut, batch=batch,
    duty=d)` each remove the next slice, `d` taking the values of `duties` in turn, with
    `window` seconds of no cleanup before the first and after each. Each cleanup is paired
    with the mean of the idle windows either side of it (drift in the machine's load
    cancels out). Completions per window are read afterwards from the tasks' finished_at."""
    try:
        async with dt.Durable.connect(url, schema=schema, queue=QUEUE) as client:
            client.register(one_step)
            t0 = time.perf_counter()
            template = await client.spawn(one_step, Job(0))
            await run_until_idle(client)
            old_ms = int(time.time() * 1000) - 3 * 86_400_000
            shift = f"- interval '2 days' + ids.g * interval '{SPREAD_MS} ms'"
            _clone(
                url,
                schema,
                template.task_id,
                template.run_id,
                finished,
                base_ms=old_ms,
                shift=shift,
            )
            with connect(url) as conn:
                conn.execute(
                    _q("DELETE FROM {s}.tasks WHERE task_id = %s", schema), (template.task_id,)
                )
            preload_s = time.perf_counter() - t0
            await preload_clones(client, url, schema, pending)
            with connect(url) as conn:
                for table in ("tasks", "runs", "checkpoints"):
                    conn.execute(_q("VACUUM ANALYZE {s}." + table, schema))
                conn.execute("CHECKPOINT")  # the load's WAL, flushed before timing starts
                loaded, first, last = conn.execute(
                    _q(
                        "SELECT count(*), min(finished_at), max(finished_at) FROM {s}.tasks"
                        " WHERE finished_at < now() - interval '1 day'",
                        schema,
                    )
                ).fetchone() or (0, None, None)
            step = (last - first) / slices
            cuts = [first + step * (k + 1) for k in range(slices - 1)]
            cuts.append(last + timedelta(milliseconds=1))
            with trio.CancelScope() as crash:
                async with trio.open_nursery() as nursery:
                    worker = client.new_worker(_options(concurrency))
                    await nursery.start(worker.run)
                    series = await _cleanup_windows(client, cuts, window, batch, duties)
                    crash.cancel()  # stop at once; in-flight runs are simply abandoned
        return {
            **_retention_result(url, schema, series),
            "finished": loaded,
            "pending": pending,
            "concurrency": concurrency,
            "batch": batch,
            "window_s": window,
            "preload_s": preload_s,
        }
    finally:
        drop_schema(url, schema)


async def _cleanup_windows(
    client: dt.Durable, cuts: list[Any], window: float, batch: int, duties: tuple[float, ...]
) -> list[dict[str, Any]]:
    """An idle window, then for each cut-off a cleanup up to it and another idle window.
    Bounds come from the database's clock (the one finished_at is written by)."""
    windows: list[dict[str, Any]] = []

    async def idle() -> None:
        start = await client.store.now()
        await trio.sleep(window)
        windows.append({"kind": "idle", "start": start, "end": await client.store.now()})

    await idle()
    for k, cut in enumerate(cuts):
        duty = duties[k % len(duties)]
        start = await client.store.now()
        removed = await client.cleanup(
            finished_before=cut, events_before=cut, batch=batch, duty=duty
        )
        end = await client.store.now()
        windows.append(
            {
                "kind": "cleanup",
                "duty": duty,
                "start": start,
                "end": end,
                "removed": attrs.asdict(removed),
            }
        )
        await idle()
    return windows


def _retention_result(url: str, schema: str, windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Completion rates per window; per duty, the cleanups' rate against the mean of the
    idle windows either side, how long the cleanups took and what they removed."""
    count = _q(
        "SELECT count(*) FROM {s}.tasks WHERE state = 'completed'"
        " AND finished_at >= %s AND finished_at < %s",
        schema,
    )
    with connect(url) as conn:
        # A backlog that ran dry would make later windows idle for want of work.
        left = conn.execute(_q("SELECT count(*) FROM {s}.runs WHERE state = 'pending'", schema))
        backlog_left = int(next(iter(left))[0])
        for w in windows:
            row = conn.execute(count, (w["start"], w["end"])).fetchone()
            w["seconds"] = (w["end"] - w["start"]).total_seconds()
            w["tasks_per_s"] = (int(row[0]) if row else 0) / w["seconds"]
    by_duty: dict[str, Any] = {}
    for i in range(1, len(windows) - 1, 2):
        before, clean, after = windows[i - 1 : i + 2]
        idle = (before["tasks_per_s"] + after["tasks_per_s"]) / 2
        node = by_duty.setdefault(str(clean["duty"]), {"pairs": []})
        node["pairs"].append(
            {
                "tasks_per_s_cleaning": clean["tasks_per_s"],
                "tasks_per_s_idle": idle,
                "ratio": clean["tasks_per_s"] / idle if idle else None,
                "seconds": clean["seconds"],
                "removed": clean["removed"],
            }
        )
    for node in by_duty.values():
        pairs = node["pairs"]
        seconds = sum(p["seconds"] for p in pairs)
        ratios = sorted(p["ratio"] for p in pairs if p["ratio"] is not None)
        removed = {k: sum(p["removed"][k] for p in pairs) for k in pairs[0]["removed"]}
        node.update(
            # Weighted by each cleanup's length: the rate over all the time spent cleaning.
            tasks_per_s_cleaning=sum(p["tasks_per_s_cleaning"] * p["seconds"] for p in pairs)
            / seconds,
            tasks_per_s_idle=sum(p["tasks_per_s_idle"] * p["seconds"] for p in pairs) / seconds,
            ratio_median_pair=ratios[len(ratios) // 2] if ratios else None,
            cleanup_s=seconds,
            removed=removed,
            rows_removed=sum(removed.values()),
            rows_per_s=sum(removed.values()) / seconds,
        )
        # No completion in the idle windows (a backlog too small for the run, as with
        # --scale 0.1): there is nothing to compare with.
        idle = node["tasks_per_s_idle"]
        node["ratio"] = node["tasks_per_s_cleaning"] / idle if idle else None
    plain = [{**w, "start": str(w["start"]), "end": str(w["end"])} for w in windows]
    return {"backlog_left": backlog_left, "by_duty": by_duty, "windows": plain}


# -- subprocess workers -----------------------------------------------------------------


def _stdin_lines() -> Callable[[], Any]:
    async def read() -> str:
        return await trio.to_thread.run_sync(sys.stdin.readline)

    return read


async def _worker_main(url: str, schema: str, concurrency: int, task_name: str) -> None:
    read = _stdin_lines()
    async with dt.Durable.connect(url, schema=schema, queue=QUEUE, migrate=False) as client:
        client.register(TASKS[task_name])
        worker = client.new_worker(
            dt.WorkerOptions(concurrency=concurrency, worker_id=f"bench-proc-{id(client)}")
        )
        print("READY", flush=True)
        async with trio.open_nursery() as nursery:
            while True:
                line = (await read()).strip()
                if line == "go":
                    await nursery.start(worker.run)
                elif line in ("stop", ""):
                    worker.shutdown()
                    break
    print(json.dumps({"claimed": worker.claimed_total}), flush=True)


def run_two_processes(
    url: str, schema: str, task_name: str, n: int, concurrency: int, timeout: float = 300
) -> dict[str, Any]:
    """Throughput with two worker processes on one queue, each at `concurrency`."""

    async def prepare() -> None:
        async with dt.Durable.connect(url, schema=schema, queue=QUEUE) as client:
            client.register(TASKS[task_name])
            await spawn_chunks(client, TASKS[task_name], n)

    try:
        trio.run(prepare)
        argv = [sys.executable, __file__, "worker", url, schema, str(concurrency), task_name]
        workers = [WorkerProcess(argv) for _ in range(2)]
        try:
            for w in workers:
                w.wait_ready()
            count = _q("SELECT count(*) FROM {s}.tasks WHERE state = 'completed'", schema)
            t0 = time.perf_counter()
            for w in workers:
                w.send("go")
            done = wait_count(url, count, n, timeout)
            seconds = time.perf_counter() - t0
            reports = [w.stop() for w in workers]
        finally:
            for w in workers:
                w.kill()
        return two_process_result(n, concurrency, done, seconds, reports)
    finally:
        drop_schema(url, schema)


async def _rss_worker_main(url: str, schema: str, concurrency: int) -> None:
    read = _stdin_lines()
    async with dt.Durable.connect(url, schema=schema, queue=QUEUE, migrate=False) as client:
        client.register(sleeper)
        worker = client.new_worker(
            dt.WorkerOptions(concurrency=concurrency, worker_id="bench-rss", shutdown_grace=0.1)
        )
        print("READY", flush=True)
        async with trio.open_nursery() as nursery:
            if (await read()).strip() == "go":
                await nursery.start(worker.run)
                print("STARTED", flush=True)
            await read()
            nursery.cancel_scope.cancel()
    print("{}", flush=True)


def rss(url: str, schema: str, in_flight: int, timeout: float = 120) -> dict[str, Any]:
    """VmRSS of one worker process holding `in_flight` runs sleeping inside a step."""

    async def prepare() -> None:
        async with dt.Durable.connect(url, schema=schema, queue=QUEUE):
            pass

    async def spawn() -> None:
        async with dt.Durable.connect(url, schema=schema, queue=QUEUE) as client:
            await client.spawn_many(sleeper, [Job(i) for i in range(in_flight)])

    try:
        trio.run(prepare)
        proc = WorkerProcess([sys.executable, __file__, "rss-worker", url, schema, str(in_flight)])
        try:
            proc.wait_ready()
            time.sleep(0.5)
            idle_kib = rss_kib(proc.pid)
            proc.send("go")
            assert proc.proc.stdout is not None
            proc.proc.stdout.readline()  # STARTED
            time.sleep(0.5)
            started_kib = rss_kib(proc.pid)
            trio.run(spawn)
            with connect(url) as conn:
                count = _q("SELECT count(*) FROM {s}.runs WHERE state = 'running'", schema)
                deadline = time.monotonic() + timeout
                running = 0
                while time.monotonic() < deadline:
                    row = conn.execute(count).fetchone()
                    running = int(row[0]) if row else 0
                    if running >= in_flight:
                        break
                    time.sleep(0.1)
            time.sleep(1.0)
            loaded_kib = rss_kib(proc.pid)
        finally:
            proc.kill()
        return {
            "in_flight": running,
            "rss_mb_idle_client": idle_kib / 1024,
            "rss_mb_worker_started": started_kib / 1024,
            "rss_mb_loaded": loaded_kib / 1024,
            "kib_per_task": (loaded_kib - started_kib) / max(running, 1),
        }
    finally:
        drop_schema(url, schema)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "worker":
        trio.run(_worker_main, sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif len(sys.argv) == 5 and sys.argv[1] == "rss-worker":
        trio.run(_rss_worker_main, sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit("usage: dt_bench.py worker URL SCHEMA C TASK | rss-worker URL SCHEMA C")
