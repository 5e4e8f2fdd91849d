"""Helpers shared by the integration tests (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

from typing import Any

from psycopg import sql

import durable_trio as dt


async def query(client: dt.Durable, text: str, *args: Any) -> list[dict[str, Any]]:
    """Run SQL against the client's schema; ``{schema}`` in `text` is the quoted schema."""
    statement = sql.SQL(text).format(schema=sql.Identifier(client.schema))
    async with client.store.pool.acquire() as conn:
        cur = await conn.execute(statement, args)
        return await cur.fetchall() if cur.description else []


async def fetch(client: dt.Durable, text: str, *args: Any) -> list[dict[str, Any]]:
    """Like `query`, for SQL that names the schema ``@s`` (no other braces to escape)."""
    schema = sql.Identifier(client.schema).as_string(None)
    async with client.store.pool.acquire() as conn:
        cur = await conn.execute(text.replace("@s", schema).encode(), args)
        return list(await cur.fetchall()) if cur.description else []


async def runs_held_by(client: dt.Durable, worker_id: str) -> int:
    """How many runs the worker holds (claimed, leased: running, or held for prefetch)."""
    [row] = await fetch(
        client,
        "SELECT count(*) AS n FROM @s.runs WHERE state = 'running' AND worker_id = %s",
        worker_id,
    )
    return int(row["n"])


# RetryStrategy.fixed(2.5) as the database stores it.
FIXED_2_5 = {"kind": "fixed", "base": 2.5, "factor": 2.0, "max_delay": 2.5, "jitter": 0.0}


async def only_task_settings(client: dt.Durable) -> dict[str, Any]:
    """The spawn settings of the one task in the client's schema, as stored."""
    [row] = await fetch(
        client,
        "SELECT max_attempts, priority, retry, headers, max_pending_delay, max_duration"
        " FROM @s.tasks",
    )
    return row
