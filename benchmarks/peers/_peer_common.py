"""Shared by the peer scripts (each runs in its own virtualenv: stdlib + psycopg only here).

A peer script is called as ``python <peer>_bench.py URL CONCURRENCY N TIMEOUT`` against a
fresh, empty database; it installs its library's schema, enqueues N one-step jobs, starts
ONE worker at CONCURRENCY and counts completions IN THE DATABASE until all N are done (or
TIMEOUT seconds pass). Its last stdout line is a JSON report.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

# The harness's own helpers (stdlib + psycopg only, like this module).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _util import wait_count

__all__ = ["Args", "count", "parse_args", "report", "wait_count"]


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
