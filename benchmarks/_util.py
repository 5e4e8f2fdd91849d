"""Small helpers shared by the benchmark modules: statistics, databases, worker processes.

Nothing here imports durable_trio: the raw-SQL ceiling uses these helpers too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

__all__ = [
    "WorkerProcess",
    "connect",
    "database_url",
    "summarize",
    "temporary_database",
]


def wait_count(url: str, query: str | bytes, n: int, timeout: float, poll: float = 0.02) -> int:
    """Poll a ``count(*)`` query until it reaches `n` or `timeout` passes; the last count."""
    deadline = time.monotonic() + timeout
    with connect(url) as conn:
        while True:
            row = conn.execute(query).fetchone()
            done = int(row[0]) if row else 0
            if done >= n or time.monotonic() > deadline:
                return done
            time.sleep(poll)


def backlog_target(pending: int) -> int:
    """Completions to time in the backlog scenario: few enough that the backlog is still
    ~its size at the end (the 10k case would otherwise run dry inside the window)."""
    return min(8000, int(pending * 0.8))


def database_clock(url: str) -> Any:
    with connect(url) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        return row[0]


def backlog_rate(url: str, table: str, pending: int, started: Any, window: float) -> dict[str, Any]:
    """The backlog scenario's result, read from the database after the window: the time
    the `backlog_target`-th completion committed (its finished_at) since `started`, or
    every completion over the whole window if fewer finished. Nothing polls the table
    while the worker runs (a count beside 1M rows would cost a core)."""
    target = backlog_target(pending)
    with connect(url) as conn:
        row = conn.execute(
            f"SELECT count(*), (SELECT extract(epoch FROM finished_at - %s)::float8 FROM {table}"
            " WHERE state = 'completed' ORDER BY finished_at OFFSET %s LIMIT 1)"
            f" FROM {table} WHERE state = 'completed'",
            (started, target - 1),
        ).fetchone()
    assert row is not None
    done, seconds = int(row[0]), row[1]
    if seconds is None:  # fewer than target finished inside the window
        return {
            "pending": pending,
            "completed_in_db": done,
            "seconds": window,
            "tasks_per_s": done / window,
        }
    return {
        "pending": pending,
        "completed_in_db": done,
        "timed": target,
        "seconds": seconds,
        "tasks_per_s": target / seconds,
    }


def summarize(samples: Sequence[float], *, keep: int = 2000) -> dict[str, Any]:
    """p50/p90/p99/mean/min/max of `samples` (seconds) in milliseconds, plus the samples."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)

    def pct(p: float) -> float:
        # nearest-rank percentile: the value at or below which p% of samples lie
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1] * 1000

    step = max(1, len(samples) // keep)
    return {
        "n": len(samples),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "mean_ms": statistics.fmean(samples) * 1000,
        "min_ms": ordered[0] * 1000,
        "max_ms": ordered[-1] * 1000,
        "samples_ms": [round(s * 1000, 4) for s in list(samples)[::step]],
    }


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=autocommit)


def database_url(url: str, dbname: str) -> str:
    """`url` pointing at database `dbname` instead (query string kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


@contextlib.contextmanager
def temporary_database(url: str, name: str) -> Iterator[str]:
    """CREATE DATABASE `name` (dropped first if it exists), yield its URL, then DROP it."""
    with connect(url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(url, name)
    finally:
        with connect(url) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def server_settings(url: str) -> dict[str, str]:
    with connect(url) as conn:
        names = (
            "server_version",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "shared_buffers",
            "max_connections",
            "wal_sync_method",
        )
        out = {}
        for name in names:
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            out[name] = str(row[0]) if row else ""
        return out


class WorkerProcess:
    """A worker in a subprocess speaking a tiny line protocol on stdin/stdout:

    it prints ``READY`` once connected, starts working on a ``go`` line, stops on ``stop``
    (or EOF) and prints one last line of JSON before exiting.
    """

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker exited before READY: {self.stderr_tail()}")
            if line.strip() == "READY":
                return
        raise TimeoutError("worker did not become ready")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self, timeout: float = 30.0) -> str:
        """Ask it to stop; return its last stdout line (its JSON report)."""
        with contextlib.suppress(BrokenPipeError, OSError):
            self.send("stop")
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self._stderr = err
        lines = [line for line in (out or "").splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def stderr_tail(self) -> str:
        if self.proc.poll() is None:
            return ""
        err = getattr(self, "_stderr", None)
        if err is None and self.proc.stderr is not None:
            err = self.proc.stderr.read()
        return (err or "")[-2000:]


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def python_for(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def this_python() -> str:
    return sys.executable


def two_process_result(
    n: int, concurrency: int, done: int, seconds: float, reports: Sequence[str]
) -> dict[str, Any]:
    """The JSON record of a two-worker-process throughput run (same shape for all systems)."""
    return {
        "n": n,
        "processes": 2,
        "concurrency_each": concurrency,
        "completed_in_db": done,
        "seconds": seconds,
        "tasks_per_s": done / seconds,
        "per_process": [json.loads(r) if r.startswith("{") else r for r in reports],
    }
