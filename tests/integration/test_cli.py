"""`durable-trio`: every command end to end through a subprocess against the real Postgres:
output, --json shapes, exit codes, bad input as one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

APP = """
import trio
import durable_trio as dt


@dt.task("hello")
async def hello(ctx: dt.TaskContext, params: dict) -> str:
    return await ctx.step("greet", lambda: "hello " + params["name"])


@dt.task("slow")
async def slow(ctx: dt.TaskContext, params: None) -> str:
    await ctx.step("started", lambda: "yes")
    await trio.sleep_forever()
    return "never"


def setup(client: dt.Durable) -> None:
    client.register(hello, slow)


tasks = [hello, slow]
nothing = []
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "cli_app.py").write_text(textwrap.dedent(APP))
    return tmp_path


def cli(
    pg_url: str, schema: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DURABLE_DATABASE_URL": pg_url}
    return subprocess.run(
        [sys.executable, "-m", "durable_trio", "--schema", schema, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def task_row(pg_url: str, schema: str, task_id: str) -> dict[str, object]:
    with psycopg.connect(pg_url, row_factory=psycopg.rows.dict_row) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT task_name, state, params, result, attempts FROM {}.tasks WHERE task_id = %s"
            ).format(sql.Identifier(schema)),
            (task_id,),
        ).fetchone()
    assert row is not None
    return row


def wait_state(pg_url: str, schema: str, task_id: str, state: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while True:
        row = task_row(pg_url, schema, task_id)
        if row["state"] == state or time.monotonic() > deadline:
            return row
        time.sleep(0.05)


@pytest.fixture
def migrated(pg_url: str, schema: str) -> str:
    done = cli(pg_url, schema, "migrate")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("applied migrations [1, 2, 3")
    return schema


def test_migrate_applies_then_reports_up_to_date(pg_url: str, migrated: str) -> None:
    again = cli(pg_url, migrated, "migrate")
    assert (again.returncode, again.stdout.strip()) == (0, "schema is up to date")


def test_migrate_print_sql_builds_the_same_schema(pg_url: str, schema: str) -> None:
    script = cli("postgresql://nobody@127.0.0.1:1/x", schema, "migrate", "--print-sql")
    assert script.returncode == 0, script.stderr
    assert script.stdout.startswith("BEGIN;")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(script.stdout.encode())
    # The schema the script built is current: migrate has nothing left to do.
    again = cli(pg_url, schema, "migrate")
    assert (again.returncode, again.stdout.strip()) == (0, "schema is up to date")


def test_spawn_then_worker_runs_it_and_stops_on_sigterm(
    pg_url: str, migrated: str, app_dir: Path
) -> None:
    spawned = cli(pg_url, migrated, "spawn", "hello", "--params", '{"name": "cli"}', "--json")
    assert spawned.returncode == 0, spawned.stderr
    result = json.loads(spawned.stdout)
    assert set(result) == {"task_id", "run_id", "attempt", "created"}
    assert UUID(result["task_id"]).version == 7
    env = {**os.environ, "DURABLE_DATABASE_URL": pg_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "durable_trio", "--schema", migrated, "worker", "cli_app:setup"],
        cwd=app_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        row = wait_state(pg_url, migrated, result["task_id"], "completed")
        assert row["result"] == "hello cli"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "started: queues default, tasks hello, slow" in out
    assert "SIGTERM: shutting down gracefully" in out
    assert "stopped" in out


def test_worker_hands_runs_back_on_one_signal_and_stops_at_once_on_two(
    pg_url: str, migrated: str, app_dir: Path
) -> None:
    spawned = json.loads(cli(pg_url, migrated, "spawn", "slow", "--json").stdout)
    env = {**os.environ, "DURABLE_DATABASE_URL": pg_url}
    argv = [sys.executable, "-m", "durable_trio", "--schema", migrated, "worker", "cli_app:tasks"]
    graceful = subprocess.Popen(
        [*argv, "--shutdown-grace", "0.2"],
        cwd=app_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_state(pg_url, migrated, spawned["task_id"], "running")
    graceful.send_signal(signal.SIGINT)
    out, _ = graceful.communicate(timeout=60)
    assert graceful.returncode == 0, out
    # Handed back without spending an attempt: pending again, still on attempt 1.
    row = task_row(pg_url, migrated, spawned["task_id"])
    assert (row["state"], row["attempts"]) == ("pending", 1)

    hard = subprocess.Popen(
        [*argv, "--shutdown-grace", "600"],
        cwd=app_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_state(pg_url, migrated, spawned["task_id"], "running")
    hard.send_signal(signal.SIGINT)
    time.sleep(0.5)  # the first signal's graceful shutdown is under way
    hard.send_signal(signal.SIGTERM)
    out, _ = hard.communicate(timeout=60)
    assert "SIGTERM again: stopping now" in out, out
    # Stopped at once: the run is left to its lease, as after a crash.
    assert task_row(pg_url, migrated, spawned["task_id"])["state"] == "running"


def test_emit_and_cancel(pg_url: str, migrated: str) -> None:
    emitted = cli(pg_url, migrated, "emit", "go", "--payload", '{"n": 1}', "--json")
    assert emitted.returncode == 0, emitted.stderr
    assert json.loads(emitted.stdout) == {"event": "go", "queue": "default", "woken": 0}
    task_id = json.loads(cli(pg_url, migrated, "spawn", "hello", "--json").stdout)["task_id"]
    cancelled = cli(pg_url, migrated, "cancel", task_id)
    assert (cancelled.returncode, cancelled.stdout.strip()) == (0, f"cancelled task {task_id}")
    assert task_row(pg_url, migrated, task_id)["state"] == "cancelled"
    again = cli(pg_url, migrated, "cancel", task_id)
    assert again.returncode == 1
    assert "already ended" in again.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--schema", "Bad Name", "migrate"], 2, "error: InvalidInput: schema name 'Bad Name'"),
        (
            ["--url", "postgresql://u:s3cret@127.0.0.1:{port}/x", "migrate"],
            3,
            "error: DatabaseUnavailable",
        ),
        (["spawn", "hello", "--params", "{nope"], 2, "--params is not JSON"),
        (["spawn", "$internal"], 2, "error: InvalidInput: task name '$internal'"),
        (["spawn", "hello", "--max-attempts", "0"], 2, "error: InvalidInput: max_attempts"),
        (["cancel", "not-a-uuid"], 2, "is not a task id"),
        (["cancel", "01890000-0000-7000-8000-000000000000"], 1, "error: no task"),
        (["emit", "go", "--queue", "Bad"], 2, "error: InvalidInput: queue name 'Bad'"),
        (["worker", "nocolon"], 2, "APP must be module:attribute"),
        (["worker", "no_such_module:x"], 2, "cannot import 'no_such_module'"),
        (["worker", "cli_app:nothing"], 2, "the app registered no task"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_errors_are_one_line_with_a_documented_exit_code(
    pg_url: str, migrated: str, app_dir: Path, args: list[str], code: int, expected: str
) -> None:
    args = [a.replace("{port}", str(_closed_port())) for a in args]
    if args[0] != "--schema":
        args = ["--schema", migrated, *args]
    env = {**os.environ, "DURABLE_DATABASE_URL": pg_url}
    done = subprocess.run(
        [sys.executable, "-m", "durable_trio", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=app_dir,
        timeout=60,
    )
    assert done.returncode == code, (done.stdout, done.stderr)
    err = done.stderr.strip()
    assert expected in err, err
    assert "Traceback" not in err
    assert "s3cret" not in err
    # One line; click's own usage errors (an unknown command) add the usage before it.
    assert len(err.splitlines()) == 1 or err.startswith("Usage:"), err


def test_version_and_help(pg_url: str) -> None:
    version = subprocess.run(
        [sys.executable, "-m", "durable_trio", "--version"], capture_output=True, text=True
    )
    assert (version.returncode, version.stdout.strip()) == (0, "durable-trio, version 0.1.0")
    helped = subprocess.run(
        [sys.executable, "-m", "durable_trio", "--help"], capture_output=True, text=True
    )
    for command in ("worker", "spawn", "cancel", "emit", "migrate", "postgres", "quickstart"):
        assert command in helped.stdout


def test_postgres_prints_a_url_that_works_and_stops_on_sigint() -> None:
    port = _closed_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "durable_trio", "postgres", "--port", str(port), "--fast"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert f"127.0.0.1:{port}" in url
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
