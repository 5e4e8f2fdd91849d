"""What a run cost the server: transactions committed, WAL written, server and client CPU,
and the row changes of each table, as deltas between two snapshots.

Nothing here imports durable_trio: the raw-SQL designs are metered the same way.

- commits: ``pg_stat_database.xact_commit`` of the bench database (read-only transactions
  count too: an empty claim is a commit here).
- WAL: ``pg_current_wal_lsn()`` difference (the whole server: only the bench runs on it).
- server CPU: user + system time of the postmaster and every process under it, plus the
  time of the children it has reaped (backends that exited during the run), read from
  ``/proc``; ``None`` when the server is not on this machine.
- client CPU: this process's own time plus that of its reaped children (worker
  subprocesses, pgbench), from ``os.times()``.

The statistics views are fed by each backend at most once a second and when it exits, so
`snapshot` is taken with the measured connections closed and waits for the counters to
settle.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from _util import connect

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # the command name is in parentheses and may hold spaces: split after it
    return text[text.rindex(")") + 2 :].split()


def postmaster_pid(url: str) -> int | None:
    """The server's postmaster, if it runs on this machine (the parent of our backend)."""
    with connect(url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    fields = _proc_stat(int(row[0])) if row else None
    if fields is None:
        return None
    parent = int(fields[1])
    try:
        with open(f"/proc/{parent}/comm") as f:
            comm = f.read().strip()
    except OSError:
        return None
    return parent if comm.startswith(("postgres", "postmaster")) else None


def server_cpu_seconds(postmaster: int | None) -> float | None:
    """CPU time of the postmaster's process tree, exited backends included."""
    if postmaster is None:
        return None
    fields = _proc_stat(postmaster)
    if fields is None:
        return None
    # utime, stime, cutime, cstime are fields 14-17 of stat, 12-15 after the name
    ticks = sum(int(x) for x in fields[11:15])
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        child = _proc_stat(int(entry))
        if child is not None and int(child[1]) == postmaster:
            ticks += sum(int(x) for x in child[11:15])
    return ticks / _TICK


def client_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass(frozen=True)
class Snapshot:
    at: float
    commits: int
    wal_lsn: str
    server_cpu: float | None
    client_cpu: float
    tables: dict[str, dict[str, int]]
    indexes: dict[str, int]  # bytes on disk of each index of the schema


def _table_counts(conn: Any, schema: str | None) -> dict[str, dict[str, int]]:
    if schema is None:
        return {}
    rows = conn.execute(
        "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del "
        "FROM pg_stat_user_tables WHERE schemaname = %s ORDER BY relname",
        (schema,),
    ).fetchall()
    return {r[0]: {"ins": r[1], "upd": r[2], "hot_upd": r[3], "del": r[4]} for r in rows}


def _index_sizes(conn: Any, schema: str | None) -> dict[str, int]:
    if schema is None:
        return {}
    rows = conn.execute(
        "SELECT indexrelname, pg_relation_size(indexrelid) FROM pg_stat_user_indexes "
        "WHERE schemaname = %s",
        (schema,),
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def _read(url: str, schema: str | None, postmaster: int | None) -> Snapshot:
    # one transaction, rolled back: the reading itself adds no commit
    with connect(url, autocommit=False) as conn:
        row = conn.execute(
            "SELECT xact_commit, pg_current_wal_lsn()::text FROM pg_stat_database "
            "WHERE datname = current_database()"
        ).fetchone()
        assert row is not None
        tables = _table_counts(conn, schema)
        indexes = _index_sizes(conn, schema)
        conn.rollback()
    return Snapshot(
        time.perf_counter(),
        int(row[0]),
        row[1],
        server_cpu_seconds(postmaster),
        client_cpu_seconds(),
        tables,
        indexes,
    )


def snapshot(
    url: str, schema: str | None = None, postmaster: int | None = None, *, settle: bool = True
) -> Snapshot:
    """Counters now; with `settle`, re-read until the table counters stop moving (up to
    ~1.6 s), so the figures of backends that just went idle or exited are in."""
    snap = _read(url, schema, postmaster)
    if not settle:
        return snap
    for _ in range(8):
        time.sleep(0.2)
        again = _read(url, schema, postmaster)
        # autovacuum's transactions count as commits too: a few are noise, not backlog
        if again.tables == snap.tables and again.commits <= snap.commits + 3:
            return snap
        snap = again
    return snap


def wal_bytes(url: str, start: str, end: str) -> int:
    with connect(url) as conn:
        row = conn.execute(
            "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (end, start)
        ).fetchone()
    return int(row[0]) if row else 0


def cost(url: str, before: Snapshot, after: Snapshot, tasks: int, seconds: float) -> dict[str, Any]:
    """Per-task and per-second figures between two snapshots, for `tasks` finished in
    `seconds` of wall time (the run's own timing, not the snapshots')."""
    tasks = max(tasks, 1)
    commits = after.commits - before.commits
    wal = wal_bytes(url, before.wal_lsn, after.wal_lsn)
    out: dict[str, Any] = {
        "commits": commits,
        "commits_per_s": commits / seconds if seconds else None,
        "commits_per_task": commits / tasks,
        "wal_bytes_per_task": wal / tasks,
        "client_cpu_us_per_task": (after.client_cpu - before.client_cpu) / tasks * 1e6,
        "server_cpu_us_per_task": None,
    }
    if before.server_cpu is not None and after.server_cpu is not None:
        out["server_cpu_us_per_task"] = (after.server_cpu - before.server_cpu) / tasks * 1e6
    return out


def table_work(before: Snapshot, after: Snapshot, tasks: int) -> dict[str, dict[str, float | None]]:
    """Row changes per task of each table between two snapshots, and the share of its
    updates that were HOT (no index entries written)."""
    out: dict[str, dict[str, float | None]] = {}
    tasks = max(tasks, 1)
    for table, end in after.tables.items():
        start = before.tables.get(table, {"ins": 0, "upd": 0, "hot_upd": 0, "del": 0})
        delta = {k: end[k] - start[k] for k in ("ins", "upd", "hot_upd", "del")}
        if not any(delta.values()):
            continue
        row: dict[str, float | None] = {f"{k}_per_task": v / tasks for k, v in delta.items()}
        row["hot_ratio"] = delta["hot_upd"] / delta["upd"] if delta["upd"] else None
        out[table] = row
    return out


def index_growth(before: Snapshot, after: Snapshot, tasks: int) -> dict[str, float]:
    """Bytes each index grew by, per task (whole 8 kB pages: coarse on small runs). A
    non-HOT update writes an entry into every index whose predicate the new row version
    matches; a HOT one writes none."""
    tasks = max(tasks, 1)
    return {
        name: (size - before.indexes.get(name, 0)) / tasks
        for name, size in sorted(after.indexes.items())
        if size != before.indexes.get(name, 0)
    }
