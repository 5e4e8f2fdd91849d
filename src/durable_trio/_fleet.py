"""The workers registry as users read it: who is live, and which due work nobody serves."""

from __future__ import annotations

from datetime import datetime

import attrs

__all__ = ["UnservedTasks", "WorkerInfo"]


@attrs.frozen
class WorkerInfo:
    """A live worker: it registered itself when it started and refreshes its row on its
    periodic pass; a worker that stops removes it, one that vanishes expires."""

    worker_id: str
    host: str
    pid: int
    queues: list[str]
    task_names: list[str]
    concurrency: int
    started_at: datetime
    last_seen_at: datetime
    expires_at: datetime


@attrs.frozen
class UnservedTasks:
    """Runs of `task_name` due on `queue` (``runs`` of them, the oldest since
    ``oldest_due``) that no live worker of that queue has registered: a typo in a spawned
    name, or a deploy that dropped the task. Workers log these at WARNING."""

    queue: str
    task_name: str
    runs: int
    oldest_due: datetime
