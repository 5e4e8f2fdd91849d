"""Schedules through crashes: worker processes racing for an every-minute schedule, one
SIGKILLed while it is inside fire_schedule's transaction, another killed at a random
moment, and Postgres crash-restarted with a slot due. Every slot is spawned exactly once.

A dedicated durable server (the shared one must not be restarted). The database clock is
moved a minute at a time; the test waits (polling) for each slot's task before the next.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

import durable_trio as dt
from durable_trio._ephemeral import EphemeralPostgres

SCHEMA = "sched"
WORKER_SCRIPT = Path(__file__).with_name("schedule_worker_proc.py")
SLOTS = 16
KILL_INSIDE_AT = 4  # the slot whose firing worker is SIGKILLed mid-transaction
KILL_RANDOM_AT = 8  # a random worker killed right after the clock passes this slot
RESTART_AT = 12  # Postgres crash-restarted right after the clock passes this slot


@pytest.fixture
def server() -> Iterator[EphemeralPostgres]:
    with EphemeralPostgres(fast=False) as pg:
        yield pg


def _sql(url: str, query: str, params: Any = None, *, retry: bool = True) -> list[Any]:
    """One statement on a fresh connection; with `retry`, again while the server restarts
    (only for statements that may run twice)."""
    give_up = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                cur = conn.execute(query, params)
                return cur.fetchall() if cur.description else []
        except psycopg.OperationalError:
            if not retry or time.monotonic() > give_up:
                raise
            time.sleep(0.1)


def _advance_to(url: str, moment: datetime) -> None:
    _sql(
        url,
        f"UPDATE {SCHEMA}.clock SET offset_by = offset_by + (%s - {SCHEMA}.clock_now())",
        (moment,),
        retry=False,
    )


def _fired(url: str) -> Counter[str]:
    """Tasks per slot, by the slot each was spawned for (not by its idempotency key, which
    the unique index would keep single anyway)."""
    rows = _sql(
        url,
        f"SELECT headers->>'scheduled_at', count(*) FROM {SCHEMA}.tasks"
        " WHERE headers->>'schedule_id' = 'minutely' GROUP BY 1",
    )
    return Counter(dict(rows))


class Workers:
    def __init__(self, url: str, logs: Path) -> None:
        self.url = url
        self.logs = logs
        self.procs: dict[str, trio.Process] = {}
        self.killed: list[str] = []
        self.started = 0

    async def start(self) -> None:
        wid = f"w{self.started}"
        self.started += 1
        with (self.logs / f"{wid}.log").open("wb") as log:
            self.procs[wid] = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    str(WORKER_SCRIPT),
                    f"{self.url}&application_name={wid}",
                    SCHEMA,
                    wid,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        with trio.fail_after(60):
            while "ready" not in self.log_of(wid):
                assert self.procs[wid].returncode is None, self.log_of(wid)
                await trio.sleep(0.05)

    async def kill(self, wid: str) -> None:
        proc = self.procs.pop(wid)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        self.killed.append(wid)

    async def stop(self) -> dict[str, int | None]:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(60):
            for proc in self.procs.values():
                await proc.wait()
        codes = {}
        for wid, proc in self.procs.items():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            codes[wid] = proc.returncode
        return codes

    def log_of(self, wid: str) -> str:
        return (self.logs / f"{wid}.log").read_text(errors="replace")


async def _wait_fired(url: str, count: int) -> None:
    with trio.fail_after(60):
        while len(await trio.to_thread.run_sync(_fired, url)) < count:
            await trio.sleep(0.02)


async def _kill_inside_fire(url: str, workers: Workers, slot: datetime) -> str:
    """Make the worker that fires `slot` block inside fire_schedule's transaction (an
    uncommitted task holds the slot's idempotency key), SIGKILL it there, and let go."""
    key = f"schedule:minutely:{slot.astimezone(UTC).isoformat()}"
    blocker = psycopg.connect(url)  # one open transaction
    try:
        blocker.execute(
            f"INSERT INTO {SCHEMA}.tasks (task_id, queue, task_name, params, headers, retry,"
            " max_attempts, priority, idempotency_key, root_task_id, state, attempts,"
            " last_run_id, created_at) VALUES (gen_random_uuid(), 'default', 'tick', 'null',"
            " '{}', '{\"kind\": \"none\"}', 1, 0, %s, gen_random_uuid(), 'pending', 1,"
            " gen_random_uuid(), now())",
            (key,),
        )
        _advance_to(url, slot + timedelta(seconds=1))
        with trio.fail_after(60):
            while True:
                rows = _sql(
                    url,
                    "SELECT application_name FROM pg_stat_activity WHERE wait_event_type ="
                    " 'Lock' AND query LIKE '%%fire_schedule%%' AND application_name <> ''",
                )
                if rows:
                    victim = str(rows[0][0])
                    break
                await trio.sleep(0.01)
        await workers.kill(victim)
        # Its server session ends as a crashed client's would: the transaction rolls back.
        _sql(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (victim,),
        )
    finally:
        blocker.rollback()
        blocker.close()
    return victim


async def test_each_slot_once_through_kills_and_a_restart(
    server: EphemeralPostgres, tmp_path: Path
) -> None:
    url = server.url
    async with dt.Durable.connect(url, schema=SCHEMA) as client:
        info = await client.schedule("minutely", "tick", None, cron="* * * * *", missed="all")
    assert info.next_fire_at is not None
    slots = [info.next_fire_at + timedelta(minutes=m) for m in range(SLOTS)]
    workers = Workers(url, tmp_path)
    try:
        for _ in range(3):
            await workers.start()
        for n, slot in enumerate(slots):
            if n == KILL_INSIDE_AT:
                victim = await _kill_inside_fire(url, workers, slot)
                await workers.start()
            else:
                _advance_to(url, slot + timedelta(seconds=1))
            if n == KILL_RANDOM_AT:
                await trio.sleep(random.random() * 0.05)
                await workers.kill(random.choice(sorted(workers.procs)))
            if n == RESTART_AT:
                await trio.to_thread.run_sync(server.restart, "immediate")
            await _wait_fired(url, n + 1)
    finally:
        codes = await workers.stop()

    assert all(code == 0 for code in codes.values()), {w: workers.log_of(w) for w in codes}
    assert len(workers.killed) == 2
    assert victim in workers.killed
    fired = _fired(url)
    assert sorted(fired) == [slot.astimezone(UTC).isoformat() for slot in slots]
    assert set(fired.values()) == {1}
    # The blocker's task was rolled back: every task is the schedule's.
    assert _sql(url, f"SELECT count(*) FROM {SCHEMA}.tasks")[0][0] == SLOTS
