"""`durable-trio`: every command end to end through a subprocess against the real Postgres:
output, --json shapes, exit codes, bad input as one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

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


def cli_worker(url: str, schema: str, app_dir: Path, *argv: str) -> subprocess.Popen[str]:
    """`durable-trio --schema SCHEMA worker ...` on the app in `app_dir`, in the background
    (its output in ``stdout``, stderr merged)."""
    return subprocess.Popen(
        [sys.executable, "-m", "durable_trio", "--schema", schema, "worker", *argv],
        cwd=app_dir,
        env={**os.environ, "DURABLE_DATABASE_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


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
    proc = cli_worker(pg_url, migrated, app_dir, "cli_app:setup")
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


@pytest.fixture
def app_role_url(pg_url: str, migrated: str) -> Iterator[str]:
    """A login role with only the grants of docs/security.md on the migrated schema."""
    role = f"app_{migrated}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        names = {"r": sql.Identifier(role), "s": sql.Identifier(migrated)}
        names["d"] = sql.Identifier(admin.info.dbname)
        for statement in (
            "CREATE ROLE {r} LOGIN PASSWORD 'app-pw'",
            "GRANT CONNECT ON DATABASE {d} TO {r}",
            "GRANT USAGE ON SCHEMA {s} TO {r}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r}",
            "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} TO {r}",
            "REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} FROM PUBLIC",
        ):
            admin.execute(sql.SQL(statement).format(**names))
    try:
        yield make_conninfo(pg_url, user=role, password="app-pw")
    finally:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("no_migrate", [[], ["--no-migrate"]])
def test_worker_runs_as_the_application_role_under_a_version(
    pg_url: str, migrated: str, app_dir: Path, app_role_url: str, no_migrate: list[str]
) -> None:
    """Under the role docs/security.md describes, with or without --no-migrate (a current
    schema needs no privilege to migrate); --version stamps the tasks it runs."""
    spawned = json.loads(
        cli(pg_url, migrated, "spawn", "hello", "--params", '{"name": "v"}', "--json").stdout
    )
    argv = ["cli_app:tasks", "--version", "2026-12-06", *no_migrate]
    proc = cli_worker(app_role_url, migrated, app_dir, *argv)
    try:
        row = wait_state(pg_url, migrated, spawned["task_id"], "completed")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert (proc.returncode, row["state"]) == (0, "completed"), out
    with psycopg.connect(pg_url) as conn:
        [version] = conn.execute(
            sql.SQL("SELECT version FROM {}.tasks WHERE task_id = %s").format(
                sql.Identifier(migrated)
            ),
            (spawned["task_id"],),
        ).fetchone() or [None]
    assert version == "2026-12-06"


def test_worker_no_migrate_leaves_a_missing_schema_missing(
    pg_url: str, schema: str, app_dir: Path
) -> None:
    done = cli(pg_url, schema, "worker", "cli_app:tasks", "--no-migrate", cwd=app_dir)
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "ConfigurationError" in done.stderr
    assert "does not exist" in done.stderr
    with psycopg.connect(pg_url) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        assert found.fetchone() is None


def test_worker_hands_runs_back_on_signals_and_a_kill_leaves_them_to_their_lease(
    pg_url: str, migrated: str, app_dir: Path
) -> None:
    spawned = json.loads(cli(pg_url, migrated, "spawn", "slow", "--json").stdout)
    graceful = cli_worker(pg_url, migrated, app_dir, "cli_app:tasks", "--shutdown-grace", "0.2")
    wait_state(pg_url, migrated, spawned["task_id"], "running")
    graceful.send_signal(signal.SIGINT)
    out, _ = graceful.communicate(timeout=60)
    assert graceful.returncode == 0, out
    # Handed back without spending an attempt: pending again, still on attempt 1.
    row = task_row(pg_url, migrated, spawned["task_id"])
    assert (row["state"], row["attempts"]) == ("pending", 1)

    hard = cli_worker(pg_url, migrated, app_dir, "cli_app:tasks", "--shutdown-grace", "600")
    wait_state(pg_url, migrated, spawned["task_id"], "running")
    hard.send_signal(signal.SIGINT)
    time.sleep(0.5)  # the first signal's graceful shutdown is under way
    hard.send_signal(signal.SIGTERM)
    out, _ = hard.communicate(timeout=60)
    assert "SIGTERM again: stopping now" in out, out
    # Stopped at once, without the grace: the run is still handed back, attempt 1.
    row = task_row(pg_url, migrated, spawned["task_id"])
    assert (row["state"], row["attempts"]) == ("pending", 1)

    killed = cli_worker(pg_url, migrated, app_dir, "cli_app:tasks")
    wait_state(pg_url, migrated, spawned["task_id"], "running")
    killed.kill()  # a real crash: nothing is handed back
    killed.communicate(timeout=60)
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
        (["worker", "cli_app:tasks", "--retention", "soon"], 2, "must be an age like 30d"),
        (["worker", "cli_app:tasks", "--prefetch", "-1"], 2, "InvalidInput: prefetch"),
        (["queues", "--unserved-after", "soon"], 2, "must be an age like 30d"),
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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_postgres_stopped_by_a_signal_stops_its_server_and_removes_its_directory(
    signum: signal.Signals,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "durable_trio", "postgres", "--fast"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    root: Path | None = None
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        root = Path(conninfo_to_dict(url)["host"])
        assert root.name.startswith("dtpg_"), url
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        proc.send_signal(signum)
        proc.communicate(timeout=60)
        assert proc.returncode == 128 + signum  # as a shell reports a process the signal ended
        assert not root.exists()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=5).close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
        if root is not None:
            _stop_left_server(root)


def _stop_left_server(root: Path) -> None:
    """Stop the server a `durable-trio postgres` left running in `root` (SIGINT to its
    postmaster: a fast shutdown), then remove the directory."""
    pid_file = root / "data" / "postmaster.pid"
    if pid_file.exists():
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
        deadline = time.monotonic() + 30
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    shutil.rmtree(root, ignore_errors=True)


def test_workers_lists_a_running_worker(pg_url: str, migrated: str, app_dir: Path) -> None:
    env = {**os.environ, "DURABLE_DATABASE_URL": pg_url}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "durable_trio",
            "--schema",
            migrated,
            "worker",
            "cli_app:tasks",
            "--worker-id",
            "cli-worker-1",
        ],
        cwd=app_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            listed = cli(pg_url, migrated, "workers", "--json")
            assert listed.returncode == 0, listed.stderr
            found = json.loads(listed.stdout)
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        [entry] = found
        assert entry["worker_id"] == "cli-worker-1"
        assert entry["task_names"] == ["hello", "slow"]
        assert entry["queues"] == ["default"]
        table = cli(pg_url, migrated, "workers")
        assert "cli-worker-1" in table.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    # A worker that stops removes itself.
    assert json.loads(cli(pg_url, migrated, "workers", "--json").stdout) == []


def test_cleanup_removes_old_finished_tasks(pg_url: str, migrated: str) -> None:
    task_id = json.loads(cli(pg_url, migrated, "spawn", "hello", "--json").stdout)["task_id"]
    assert cli(pg_url, migrated, "cancel", task_id).returncode == 0
    kept = cli(pg_url, migrated, "cleanup", "--finished-before", "1d", "--json")
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout) == {"tasks": 0, "runs": 0, "checkpoints": 0, "events": 0}
    removed = cli(pg_url, migrated, "cleanup", "--finished-before", "2999-01-01T00:00:00Z")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == "removed 1 task(s), 1 run(s), 0 checkpoint(s), 0 event(s)"
    paced = cli(pg_url, migrated, "cleanup", "--finished-before", "1d", "--duty", "0.2")
    assert paced.returncode == 0, paced.stderr
    for bad, message in [
        (["--finished-before", "1d", "--duty", "0"], "duty must be a number above 0"),
        ([], "give --finished-before and/or --events-before"),
        (["--finished-before", "soon"], "must be an age like 30d"),
        (["--events-before", "2030-01-01T00:00:00"], "needs a UTC offset"),
    ]:
        done = cli(pg_url, migrated, "cleanup", *bad)
        assert done.returncode == 2
        assert message in done.stderr


def _run_worker_until(pg_url: str, schema: str, app_dir: Path, task_id: str, state: str) -> None:
    env = {**os.environ, "DURABLE_DATABASE_URL": pg_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "durable_trio", "--schema", schema, "worker", "cli_app:setup"],
        cwd=app_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_state(pg_url, schema, task_id, state)["state"] == state
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


def test_queues_shows_runs_no_live_worker_serves(pg_url: str, migrated: str) -> None:
    spawned = cli(pg_url, migrated, "spawn", "ghost", "--json")
    assert spawned.returncode == 0, spawned.stderr
    with psycopg.connect(pg_url, autocommit=True) as conn:  # ten minutes pass
        conn.execute(
            sql.SQL("UPDATE {}.clock SET offset_by = offset_by + interval '10 minutes'").format(
                sql.Identifier(migrated)
            )
        )
    shown = cli(pg_url, migrated, "queues", "--json")
    assert shown.returncode == 0, shown.stderr
    stats = json.loads(shown.stdout)
    assert (stats["unserved_after"], stats["unserved_runs"]) == (300, 1)
    assert stats["oldest_unserved_age"] >= 600
    [ghost] = stats["by_name"]
    assert (ghost["task_name"], ghost["unserved_runs"]) == ("ghost", 1)
    assert ghost["oldest_unserved_age"] >= 600
    table = cli(pg_url, migrated, "queues").stdout
    assert "unserved (5m)" in table
    assert "1, oldest 6" in table  # the run count and the oldest's age in seconds
    patient = json.loads(cli(pg_url, migrated, "queues", "--unserved-after", "1h", "--json").stdout)
    assert (patient["unserved_runs"], patient["by_name"][0]["oldest_unserved_age"]) == (0, None)


def test_tasks_ls_show_queues_and_retry(pg_url: str, migrated: str, app_dir: Path) -> None:
    ok = json.loads(
        cli(pg_url, migrated, "spawn", "hello", "--params", '{"name": "a"}', "--json").stdout
    )["task_id"]
    bad = json.loads(
        cli(
            pg_url,
            migrated,
            "spawn",
            "hello",
            "--params",
            '{"nom": "b"}',
            "--max-attempts",
            "1",
            "--json",
        ).stdout
    )["task_id"]
    _run_worker_until(pg_url, migrated, app_dir, bad, "failed")
    wait_state(pg_url, migrated, ok, "completed")

    listed = cli(pg_url, migrated, "tasks", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    page = json.loads(listed.stdout)
    assert [t["task_id"] for t in page["items"]] == [ok, bad]
    assert page["next_after"] is None
    first = json.loads(cli(pg_url, migrated, "tasks", "ls", "--limit", "1", "--json").stdout)
    assert [t["task_id"] for t in first["items"]] == [ok]
    rest = cli(pg_url, migrated, "tasks", "ls", "--after", first["next_after"], "--json")
    assert [t["task_id"] for t in json.loads(rest.stdout)["items"]] == [bad]
    failed = json.loads(cli(pg_url, migrated, "tasks", "ls", "--state", "failed", "--json").stdout)
    assert [t["task_id"] for t in failed["items"]] == [bad]
    table = cli(pg_url, migrated, "tasks", "ls", "--state", "completed")
    assert ok in table.stdout
    assert bad not in table.stdout

    shown = json.loads(cli(pg_url, migrated, "tasks", "show", ok, "--json").stdout)
    assert shown["task"]["state"] == "completed"
    assert shown["task"]["result"] == "hello a"
    assert [(s["name"], s["value"]) for s in shown["steps"]] == [("greet", "hello a")]
    human = cli(pg_url, migrated, "tasks", "show", bad)
    assert human.returncode == 0, human.stderr
    assert "state=failed" in human.stdout
    assert "KeyError" in human.stdout  # the attempt's error, with its type

    stats = json.loads(cli(pg_url, migrated, "queues", "--json").stdout)
    assert stats["failed"] == 1
    assert [n["task_name"] for n in stats["by_name"]] == ["hello"]
    assert "hello" in cli(pg_url, migrated, "queues").stdout

    retried = cli(pg_url, migrated, "retry", bad, "--max-attempts", "3", "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["attempt"] == 2
    assert task_row(pg_url, migrated, bad)["state"] == "pending"
    again = cli(pg_url, migrated, "retry", bad)
    assert again.returncode == 1  # pending: nothing to retry
    assert "error: " in again.stderr
    missing = cli(pg_url, migrated, "tasks", "show", "01890000-0000-7000-8000-000000000000")
    assert missing.returncode == 1


def test_schedules_add_ls_pause_resume_rm(pg_url: str, migrated: str) -> None:
    added = cli(
        pg_url,
        migrated,
        "schedules",
        "add",
        "nightly",
        "hello",
        "--cron",
        "30 2 * * *",
        "--timezone",
        "Europe/Paris",
        "--params",
        '{"name": "n"}',
        "--json",
    )
    assert added.returncode == 0, added.stderr
    info = json.loads(added.stdout)
    assert (info["schedule_id"], info["cron"], info["timezone"]) == (
        "nightly",
        "30 2 * * *",
        "Europe/Paris",
    )
    assert info["next_fire_at"] is not None
    [listed] = json.loads(cli(pg_url, migrated, "schedules", "ls", "--json").stdout)
    assert listed["params"] == {"name": "n"}
    assert "nightly" in cli(pg_url, migrated, "schedules", "ls").stdout
    assert cli(pg_url, migrated, "schedules", "pause", "nightly").returncode == 0
    assert json.loads(cli(pg_url, migrated, "schedules", "ls", "--json").stdout)[0]["paused"]
    assert cli(pg_url, migrated, "schedules", "pause", "nightly").returncode == 1
    assert cli(pg_url, migrated, "schedules", "resume", "nightly").returncode == 0
    assert cli(pg_url, migrated, "schedules", "rm", "nightly").returncode == 0
    assert json.loads(cli(pg_url, migrated, "schedules", "ls", "--json").stdout) == []
    gone = cli(pg_url, migrated, "schedules", "pause", "nightly")
    assert gone.returncode == 1
    assert "no schedule with id 'nightly'" in gone.stderr
    bad = cli(pg_url, migrated, "schedules", "add", "x", "hello", "--cron", "not cron")
    assert bad.returncode == 2
    assert "error: InvalidInput" in bad.stderr


def test_quickstart_ends_by_showing_its_task(pg_url: str) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "durable_trio", "--url", pg_url, "quickstart"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA IF EXISTS durable CASCADE")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    [shown] = [line for line in lines if line.startswith("$ durable-trio tasks show ")]
    task_id = shown.rsplit(" ", 1)[1]
    assert f"research {task_id}" in done.stdout
    assert "state=completed" in done.stdout
    for step in ("find-sources", "analyze", "summarize"):
        assert step in done.stdout
