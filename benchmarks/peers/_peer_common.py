"""Shared by the peer scripts (each runs in its own virtualenv: stdlib + psycopg only here).

A peer script is called as ``python <peer>_bench.py URL CONCURRENCY N TIMEOUT`` against a
fresh, empty database; it installs its library's schema, enqueues N one-step jobs, starts
ONE worker at CONCURRENCY and counts completions IN THE DATABASE until all N are done (or
TIMEOUT seconds pass). Its last stdout line is a JSON report.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import psycopg


@dataclass
class Args:
    url: str
    concurrency: int
    n: int
    timeout: float


def parse_args() -> Args:
    if len(sys.argv) != 5:
        sys.exit(f"usage: {sys.argv[0]} URL CONCURRENCY N TIMEOUT")
    return Args(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))


def count(url: str, query: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
        return int(row[0]) if row else 0


def wait_count(url: str, query: str, n: int, timeout: float, poll: float = 0.02) -> int:
    """Poll `query` (a count of completed jobs) until it reaches n or timeout passes."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(query).fetchone()
            done = int(row[0]) if row else 0
            if done >= n or time.monotonic() > deadline:
                return done
            time.sleep(poll)


def report(system: str, dist: str, args: Args, done: int, seconds: float, **extra: Any) -> None:
    print(
        json.dumps(
            {
                "system": system,
                "version": metadata.version(dist),
                "concurrency": args.concurrency,
                "n": args.n,
                "completed_in_db": done,
                "seconds": seconds,
                "tasks_per_s": done / seconds if seconds > 0 else 0.0,
                "timed_out": done < args.n,
                **extra,
            }
        ),
        flush=True,
    )
