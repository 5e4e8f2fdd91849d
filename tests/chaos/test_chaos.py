"""Chaos: worker processes SIGKILLed at random moments, Postgres crash-restarted under them.

A dedicated durable server (fsync on, synchronous_commit on) that this test restarts with
``pg_ctl restart -m immediate``; several worker subprocesses (tests/chaos/worker_proc.py)
with 2-second leases, killed and replaced at random; tasks spawned in waves throughout.
Afterwards every task must be completed exactly once, and the ledger (written inside each
step's own transaction) must show that no committed step ever ran twice.

Real time is used (this is chaos), but nothing asserts on timing. ``DURABLE_THOROUGH=1``
runs ten times the tasks over a longer window; ``DURABLE_CHAOS_SEED`` replays a schedule
(kill/restart moments; the interleavings themselves are not reproducible).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

import durable_trio as dt
from durable_trio._ephemeral import EphemeralPostgres

THOROUGH = os.environ.get("DURABLE_THOROUGH") == "1"
N_TASKS = 5000 if THOROUGH else 500
CHAOS_SECONDS = 150.0 if THOROUGH else 40.0
FINISH_DEADLINE = 900.0 if THOROUGH else 150.0
N_WORKERS = 3
RESTART_AT = (0.25, 0.5, 0.8) if not THOROUGH else (0.1, 0.25, 0.4, 0.55, 0.7, 0.85)
# Besides the quick crash-restarts: outages longer than the workers' 2 s leases.
OUTAGE_AT = (0.65,) if not THOROUGH else (0.3, 0.65, 0.9)
OUTAGE_SECONDS = 5.0
SCHEMA = "chaos"
WORKER_SCRIPT = Path(__file__).with_name("worker_proc.py")
TRANSIENT = (dt.DatabaseUnavailable, psycopg.OperationalError, psycopg.InterfaceError)


@pytest.fixture
def server() -> Iterator[EphemeralPostgres]:
    # Not the shared session server: this one gets crash-restarted. Durable settings.
    with EphemeralPostgres(fast=False) as pg:
        yield pg


def _sql(url: str, query: str, params: Any = None, *, deadline: float = 60.0) -> list[Any]:
    """Run one statement on a fresh connection, retrying while the server restarts."""
    give_up = time.monotonic() + deadline
    while True:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                cur = conn.execute(query, params)
                return cur.fetchall() if cur.description else []
        except psycopg.OperationalError:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.1)


class Chaos:
    """Owns the worker processes and the tallies."""

    def __init__(self, url: str, logs: Path, rng: random.Random) -> None:
        self.url = url
        self.logs = logs
        self.rng = rng
        self.procs: dict[str, trio.Process] = {}
        self.started = 0
        self.kills = 0
        self.restarts = 0
        self.outages = 0
        self.unexpected: list[tuple[str, int | None]] = []
        self.killed: set[str] = set()

    async def start_worker(self) -> None:
        worker_id = f"w{self.started:03d}"
        self.started += 1
        log = (self.logs / f"{worker_id}.log").open("wb")
        # Every other worker claims ahead: its held runs must survive kills as well.
        ahead = ["8", "4"] if self.started % 2 else []
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(WORKER_SCRIPT), self.url, SCHEMA, worker_id, *ahead],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs[worker_id] = proc

    def check_exits(self) -> list[str]:
        """Workers that ended without being killed: each is a bug (reported at the end)."""
        gone = [
            wid
            for wid, p in self.procs.items()
            if p.returncode is not None and wid not in self.killed
        ]
        for wid in gone:
            self.unexpected.append((wid, self.procs.pop(wid).returncode))
        return gone

    async def kill_random(self) -> None:
        wid = self.rng.choice(sorted(self.procs))
        proc = self.procs.pop(wid)
        self.killed.add(wid)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        self.kills += 1

    async def keep_killing(self, until: float) -> None:
        while trio.current_time() < until:
            await trio.sleep(self.rng.uniform(0.3, 2.0))
            for _ in self.check_exits():
                await self.start_worker()
            # Usually one worker, sometimes all of them at once.
            victims = len(self.procs) if self.rng.random() < 0.1 else 1
            for _ in range(victims):
                await self.kill_random()
            # Usually replace at once, sometimes run a while short of workers.
            if self.rng.random() < 0.3:
                await trio.sleep(self.rng.uniform(0.0, 1.0))
            for _ in range(victims):
                await self.start_worker()

    async def restart_postgres(self, server: EphemeralPostgres, start: float) -> None:
        plan = sorted([(f, "restart") for f in RESTART_AT] + [(f, "outage") for f in OUTAGE_AT])
        for fraction, kind in plan:
            await trio.sleep_until(start + fraction * CHAOS_SECONDS)
            if kind == "restart":
                await trio.to_thread.run_sync(server.restart, "immediate")
                self.restarts += 1
                continue
            # A crash, then the server stays down for longer than a lease. (EphemeralPostgres
            # has no public stop that keeps the data directory.)
            await trio.to_thread.run_sync(server._pg_ctl, server.root, "stop", "-m", "immediate")
            await trio.sleep(OUTAGE_SECONDS)
            started = await trio.to_thread.run_sync(server._pg_ctl, server.root, "start")
            assert started.returncode == 0, started.stdout + started.stderr
            self.outages += 1

    async def stop_all(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        # SIGTERM before the signal handler is installed would look like a crash.
        with trio.move_on_after(30):
            while not all(
                "ready" in (self.logs / f"{wid}.log").read_text(errors="replace")
                or p.returncode is not None
                for wid, p in self.procs.items()
            ):
                await trio.sleep(0.1)
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(60):
            for proc in self.procs.values():
                await proc.wait()
        for wid, proc in self.procs.items():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
                codes[wid] = None  # did not stop gracefully in time
            else:
                codes[wid] = proc.returncode
        return codes

    def log_of(self, worker_id: str) -> str:
        return (self.logs / f"{worker_id}.log").read_text(errors="replace")[-4000:]


async def _spawn_all(client: dt.Durable, count: int, start: float) -> None:
    """Spawn `count` tasks in waves across the chaos window, retrying through restarts.

    Each spawn carries an idempotency key, so a retry after a commit whose answer was
    lost cannot create a second task."""
    options = {
        "max_attempts": 200,
        "retry": dt.RetryStrategy.fixed(0.2),
    }
    waves = max(1, int(CHAOS_SECONDS * 0.9))
    per_wave = -(-count // waves)
    n = 0
    for wave in range(waves):
        await trio.sleep_until(start + wave * CHAOS_SECONDS * 0.9 / waves)
        for _ in range(min(per_wave, count - n)):
            opts = dt.SpawnOptions(idempotency_key=f"chaos-{n}", **options)
            while True:
                try:
                    await client.spawn_by_name("chaos", {"n": n}, options=opts)
                    break
                except TRANSIENT:
                    await trio.sleep(0.1)
            n += 1
    assert n == count


async def _wait_all_terminal(url: str, count: int) -> None:
    while True:
        rows = await trio.to_thread.run_sync(
            _sql,
            url,
            f"SELECT count(*) FROM {SCHEMA}.tasks "
            "WHERE state IN ('completed', 'failed', 'cancelled')",
        )
        if rows[0][0] >= count:
            return
        await trio.sleep(0.5)


async def test_chaos_kills_and_restarts_lose_nothing(
    server: EphemeralPostgres, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = server.url
    settings = dict(
        _sql(
            url,
            "SELECT name, setting FROM pg_settings "
            "WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes')",
        )
    )
    assert settings == {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}

    seed = int(os.environ.get("DURABLE_CHAOS_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    began = time.monotonic()

    async with dt.Durable.connect(url, schema=SCHEMA, migrate=True) as client:
        _sql(
            url,
            f"CREATE TABLE {SCHEMA}.ledger (id bigserial PRIMARY KEY, task_id uuid NOT NULL,"
            " step text NOT NULL, run_id uuid NOT NULL, attempt integer NOT NULL,"
            " at timestamptz NOT NULL DEFAULT clock_timestamp())",
        )
        chaos = Chaos(url, tmp_path, rng)
        try:
            for _ in range(N_WORKERS):
                await chaos.start_worker()
            start = trio.current_time()
            with trio.fail_after(CHAOS_SECONDS + FINISH_DEADLINE):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(chaos.keep_killing, start + CHAOS_SECONDS)
                    nursery.start_soon(chaos.restart_postgres, server, start)
                    await _spawn_all(client, N_TASKS, start)
                # Chaos is over; the surviving and replacement workers finish the work.
                chaos.check_exits()
                while len(chaos.procs) < N_WORKERS:
                    await chaos.start_worker()
                await _wait_all_terminal(url, N_TASKS)
        finally:
            codes = await chaos.stop_all()

    # -- figures ----------------------------------------------------------------------
    states = dict(_sql(url, f"SELECT state, count(*) FROM {SCHEMA}.tasks GROUP BY state"))
    run_errors = Counter(
        dict(
            _sql(
                url,
                f"SELECT coalesce(error->>'type', '-'), count(*) FROM {SCHEMA}.runs "
                "WHERE state = 'failed' GROUP BY 1",
            )
        )
    )
    total_runs = _sql(url, f"SELECT count(*) FROM {SCHEMA}.runs")[0][0]
    max_attempts = _sql(url, f"SELECT max(attempts) FROM {SCHEMA}.tasks")[0][0]
    figures = {
        "seed": seed,
        "tasks": N_TASKS,
        "task_states": states,
        "worker_processes": chaos.started,
        "kills": chaos.kills,
        "postgres_restarts": chaos.restarts,
        "postgres_outages": chaos.outages,
        "runs": total_runs,
        "reclaimed_runs (lease expired, reaped)": run_errors.get("LeaseExpired", 0),
        "failed_runs_by_error": dict(run_errors),
        "max_attempts_used": max_attempts,
        "unexpected_worker_exits": chaos.unexpected,
        "graceful_exit_codes": codes,
        "seconds": round(time.monotonic() - began, 1),
    }
    with capsys.disabled():
        print("\nchaos figures:", json.dumps(figures, indent=2, default=str))

    # -- invariants -------------------------------------------------------------------
    crashed = [(wid, code) for wid, code in [*chaos.unexpected, *codes.items()] if code != 0]
    assert not crashed, "\n\n".join(
        f"worker {wid} ended with {code}:\n{chaos.log_of(wid)}" for wid, code in crashed
    )
    assert chaos.kills >= 5
    assert chaos.restarts >= 2
    assert chaos.outages == len(OUTAGE_AT)
    assert states == {"completed": N_TASKS}

    # No committed step executed twice: one ledger row per (task, step)...
    duplicates = _sql(
        url,
        f"SELECT task_id, step, count(*) FROM {SCHEMA}.ledger "
        "GROUP BY task_id, step HAVING count(*) <> 1",
    )
    assert duplicates == []
    assert _sql(url, f"SELECT count(*) FROM {SCHEMA}.ledger")[0][0] == 3 * N_TASKS
    # ...written by the very run whose checkpoint committed with it.
    unmatched = _sql(
        url,
        f"SELECT l.task_id, l.step FROM {SCHEMA}.ledger l "
        f"LEFT JOIN {SCHEMA}.checkpoints c ON c.task_id = l.task_id AND c.name = l.step "
        "WHERE c.run_id IS DISTINCT FROM l.run_id",
    )
    assert unmatched == []

    # No duplicate completion: exactly one completed run per task, none left running.
    not_once = _sql(
        url,
        f"SELECT task_id FROM {SCHEMA}.runs GROUP BY task_id "
        "HAVING count(*) FILTER (WHERE state = 'completed') <> 1",
    )
    assert not_once == []
    assert _sql(url, f"SELECT count(*) FROM {SCHEMA}.runs WHERE state = 'running'")[0][0] == 0

    # Results replayed correctly (the plain step's checkpointed value included).
    results = _sql(url, f"SELECT params, result FROM {SCHEMA}.tasks")
    for params, result in results:
        assert result == {
            "n": params["n"],
            "product": params["n"] * 7,
            "steps": ["s1", "s2", "s3"],
        }
    assert sorted(params["n"] for params, _ in results) == list(range(N_TASKS))
