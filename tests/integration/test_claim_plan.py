"""The claim's query plan: it must walk the claim index in order and stop at the limit,
whatever the state of the table's statistics when the worker's session first plans it."""

from __future__ import annotations

import psycopg
from psycopg import sql

import durable_trio as dt


@dt.task("plan_noop")
async def noop(ctx: dt.TaskContext, p: int) -> int:
    return p


def _claim_plans(url: str, schema: str) -> list[str]:
    """Claim one run with auto_explain reporting every nested statement's plan."""
    plans: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
        for setting in (
            "LOAD 'auto_explain'",
            "SET auto_explain.log_min_duration = 0",
            "SET auto_explain.log_nested_statements = on",
            "SET auto_explain.log_level = notice",
            "SET client_min_messages = notice",
        ):
            conn.execute(setting)
        conn.execute(
            sql.SQL(
                "SELECT * FROM {}.claim_runs('default', 'w', ARRAY['plan_noop'], 1, '30 s')"
            ).format(sql.Identifier(schema))
        )
    return plans


async def test_claim_walks_the_claim_index_before_any_analyze(
    client: dt.Durable, pg_url: str, schema: str
) -> None:
    # 1,000 pending runs that no analyze has seen: the planner has no statistics. The pick
    # once read every due run through runs_due and sorted them, on every claim.
    await client.spawn_many(noop, list(range(1000)))
    [pick] = [p for p in _claim_plans(pg_url, schema) if "array_agg(q.run_id)" in p]
    assert "Index Scan using runs_claim" in pick, pick
    assert "Sort" not in pick, pick


async def test_claim_finds_runs_and_tasks_by_id(
    client: dt.Durable, pg_url: str, schema: str
) -> None:
    # With 1,000 tasks and no statistics, the generic plans once read runs and tasks
    # whole (a hash join on a sequential scan) to find the handful of claimed ids.
    await client.spawn_many(noop, list(range(1000)))
    plans = _claim_plans(pg_url, schema)
    assert len(plans) >= 4  # the pick, the checks, the update, the call itself
    for plan in plans:
        assert "Seq Scan on runs" not in plan, plan
        assert "Seq Scan on tasks" not in plan, plan
