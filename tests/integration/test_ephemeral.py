"""The throwaway PostgreSQL server used by the quickstart and the test suite."""

from __future__ import annotations

import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from durable_trio import _ephemeral
from durable_trio._ephemeral import EphemeralPostgres, PostgresUnavailable, find_bindir

try:
    find_bindir()
except PostgresUnavailable as exc:  # pragma: no cover - depends on the machine
    # Never a skip: a suite that cannot reach Postgres has not tested anything.
    pytest.fail(f"no PostgreSQL server programs: {exc}", pytrace=False)


def _select_one(url: str) -> int:
    with psycopg.connect(url, connect_timeout=10) as conn:
        row = conn.execute("select 1").fetchone()
    assert row is not None
    return int(row[0])


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} still alive")


@pytest.fixture(scope="module")
def pg() -> Iterator[EphemeralPostgres]:
    with EphemeralPostgres() as server:
        yield server


def test_socket_server_accepts_connections(pg: EphemeralPostgres) -> None:
    assert pg.running
    assert pg.url == (f"postgresql://postgres@/postgres?host={pg.socket_dir}&port={pg.port}")
    assert len(os.fsencode(pg.socket_dir)) < 100
    assert _select_one(pg.url) == 1


def test_settings_applied(pg: EphemeralPostgres) -> None:
    with psycopg.connect(pg.url) as conn:
        values = {
            name: conn.execute(f"show {name}").fetchone()
            for name in (
                "fsync",
                "max_connections",
                "listen_addresses",
                "server_encoding",
            )
        }
    assert values == {
        "fsync": ("on",),
        "max_connections": ("300",),
        "listen_addresses": ("",),
        "server_encoding": ("UTF8",),
    }


def test_restart_immediate_keeps_committed_data(pg: EphemeralPostgres) -> None:
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("create table if not exists survivor (v int)")
        conn.execute("insert into survivor values (42)")
    old_pid = pg.pid
    pg.restart(mode="immediate")
    assert pg.pid != old_pid
    with psycopg.connect(pg.url) as conn:
        assert conn.execute("select v from survivor").fetchall() == [(42,)]


def test_restart_after_postmaster_killed(pg: EphemeralPostgres) -> None:
    pid = pg.pid
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    with pytest.raises(psycopg.OperationalError):
        _select_one(pg.url)
    pg.restart()
    assert _select_one(pg.url) == 1


def test_stop_removes_directory_and_is_idempotent() -> None:
    server = EphemeralPostgres(fast=True).start()
    root = server.root
    assert server.data_dir.is_dir()
    assert _select_one(server.url) == 1
    server.stop()
    assert not root.exists()
    assert not server.running
    server.stop()
    with pytest.raises(psycopg.OperationalError):
        _select_one(f"postgresql://postgres@/postgres?host={root}&port=5432")


def test_tcp_server() -> None:
    with EphemeralPostgres(tcp=True, fast=True) as server:
        assert server.url == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        assert _select_one(server.url) == 1
        with psycopg.connect(server.url) as conn:
            assert conn.execute("show fsync").fetchone() == ("off",)
        server.restart(mode="immediate")
        assert _select_one(server.url) == 1


def test_two_servers_side_by_side() -> None:
    with EphemeralPostgres() as a, EphemeralPostgres(use_template=False) as b:
        assert a.url != b.url
        assert _select_one(a.url) == _select_one(b.url) == 1


def test_bad_bindir_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_PG_BINDIR", "/nonexistent")
    with pytest.raises(PostgresUnavailable, match="DURABLE_TEST_DATABASE_URL"):
        EphemeralPostgres().start()


def test_no_programs_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DURABLE_PG_BINDIR", raising=False)
    monkeypatch.setattr(_ephemeral, "_candidate_bindirs", lambda: iter(()))
    with pytest.raises(PostgresUnavailable) as info:
        EphemeralPostgres().start()
    message = str(info.value)
    for hint in (
        "DURABLE_TEST_DATABASE_URL",
        "DURABLE_DATABASE_URL",
        "apt-get install postgresql",
        "brew install postgresql@15",
    ):
        assert hint in message


def test_failed_start_reports_log_and_cleans_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    created: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(**kwargs: str) -> str:
        created.append(real_mkdtemp(**kwargs))
        return created[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    server = EphemeralPostgres(settings={"shared_buffers": "not-a-size"})
    with pytest.raises(PostgresUnavailable, match="shared_buffers"):
        server.start()
    assert not server.running
    assert created
    assert not any(Path(path).exists() for path in created)


# -- the server shipped on PyPI (the `embedded` extra) --------------------------------------


def test_the_embedded_server_is_the_last_resort(monkeypatch: pytest.MonkeyPatch) -> None:
    embedded = _ephemeral.embedded_bindir()
    assert embedded is not None, "the test environment installs durable_trio[embedded]"
    monkeypatch.delenv("DURABLE_PG_BINDIR", raising=False)
    # A machine with no PostgreSQL of its own: nothing on PATH, no pg_config, no packages.
    monkeypatch.setattr(_ephemeral, "_pg_config_bindir", lambda: None)
    monkeypatch.setattr(_ephemeral.shutil, "which", lambda name: None)
    monkeypatch.setattr(_ephemeral, "_SYSTEM_BINDIRS", ())
    assert find_bindir() == embedded
    # And without the wheel either: the error says how to get a server.
    monkeypatch.setattr(_ephemeral, "embedded_bindir", lambda: None)
    with pytest.raises(PostgresUnavailable, match=r"durable_trio\[embedded\]"):
        find_bindir()


def test_the_embedded_server_starts_and_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    embedded = _ephemeral.embedded_bindir()
    assert embedded is not None
    monkeypatch.setenv("DURABLE_PG_BINDIR", str(embedded))
    with EphemeralPostgres(fast=True) as pg, psycopg.connect(pg.url) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    assert int(row[0]) >= 180000
