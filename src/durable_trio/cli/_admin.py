"""The schema, a throwaway server, and the quickstart."""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, ModuleType

import click
import trio

import durable_trio as dt

from .._ephemeral import EphemeralPostgres, PostgresUnavailable
from .._schema import functions, migrations, render
from .._sql import MIGRATE_LOCK
from ._common import run, settings
from ._tasks import show_task

CONNECT_TIMEOUT = 30.0  # seconds, as `Durable.connect`'s default


@click.command()
@click.option(
    "--print-sql",
    is_flag=True,
    help="Print the SQL that builds the schema from nothing (for review or manual "
    "application), without connecting.",
)
def migrate(print_sql: bool) -> None:
    """Create or upgrade the schema."""
    if print_sql:
        click.echo(_schema_script(settings().schema))
        return

    s = settings()
    applied = run(lambda: _migrate(s.url, s.schema))
    click.echo(f"applied migrations {applied}" if applied else "schema is up to date")


async def _migrate(url: str | None, schema: str) -> list[int]:
    """Migrate and return the versions applied, on a client made but not opened:
    `Durable.connect` with migrate=False refuses a schema that is not current, and with
    migrate=True does not say what it applied."""
    if url is None:
        raise dt.ConfigurationError("no database URL: pass --url or set DURABLE_DATABASE_URL")
    c = dt.Durable(url, queue="default", schema=schema, pool_size=1)
    try:
        with trio.move_on_after(CONNECT_TIMEOUT) as waited:
            async with c.store.pool.acquire():
                pass  # unreachable: say so in CONNECT_TIMEOUT, as connect does
        if waited.cancelled_caught:
            raise dt.DatabaseUnavailable(f"cannot connect within {CONNECT_TIMEOUT:g}s")
        return await c.migrate()
    finally:
        with trio.CancelScope(shield=True):
            await c.store.pool.aclose()


def _schema_script(schema: str) -> str:
    quoted = render("@schema", schema)
    parts = [
        "BEGIN;",
        f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK});",
        f"CREATE SCHEMA IF NOT EXISTS {quoted};",
        f"CREATE TABLE {quoted}.migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now());",
        f"CREATE TABLE {quoted}.functions (name text PRIMARY KEY, digest text NOT NULL,"
        " installed_at timestamptz NOT NULL DEFAULT now());",
    ]
    for name, text, digest in functions():
        parts += [
            render(text, schema).strip(),
            f"INSERT INTO {quoted}.functions (name, digest) VALUES ('{name}', '{digest}');",
        ]
    for version, name, text in migrations():
        parts += [
            render(text, schema).strip(),
            f"INSERT INTO {quoted}.migrations (version, name) VALUES ({version}, '{name}');",
        ]
    return "\n\n".join([*parts, "COMMIT;"])


@click.command()
@click.option("--tcp", is_flag=True, help="Listen on 127.0.0.1 (default: a Unix socket only).")
@click.option("--port", type=int, default=None, help="TCP port (implies --tcp).")
@click.option("--fast", is_flag=True, help="fsync off and similar: data may be lost.")
def postgres(tcp: bool, port: int | None, fast: bool) -> None:
    """Run a throwaway PostgreSQL until Ctrl-C (or SIGTERM, SIGHUP) and print its URL."""
    try:
        with _stopped_by(signal.SIGTERM, signal.SIGHUP):
            server = EphemeralPostgres(tcp=tcp or port is not None, port=port, fast=fast)
            with server:
                click.echo(server.url)
                click.echo(f"export DURABLE_DATABASE_URL='{server.url}'")
                click.echo("Press Ctrl-C to stop the server.")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
    except PostgresUnavailable as ex:
        raise click.ClickException(str(ex)) from None
    except _Signalled as ex:  # the server is stopped and its directory gone
        raise click.exceptions.Exit(128 + ex.signum) from None


class _Signalled(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _stopped_by(*signums: signal.Signals) -> Iterator[None]:
    """Turn these signals into `_Signalled`, raised where the program is, so that the
    blocks it leaves clean up as for Ctrl-C (the default action would leave the server
    running and its directory behind). Once one came, the others are ignored, so that
    a second cannot interrupt the cleanup."""

    def handle(signum: int, frame: FrameType | None) -> None:
        for one in signums:
            signal.signal(one, signal.SIG_IGN)
        raise _Signalled(signum)

    previous = {one: signal.signal(one, handle) for one in signums}
    try:
        yield
    finally:
        for one, handler in previous.items():
            signal.signal(one, handler)


@click.command()
def quickstart() -> None:
    """Run the quickstart workflow (a throwaway PostgreSQL when no URL is set), then show
    its research task as `durable-trio tasks show` does."""
    module = _load_quickstart()
    url = settings().url or os.environ.get("DURABLE_DATABASE_URL")
    if url:
        _quickstart(module, url)
        return
    click.echo("DURABLE_DATABASE_URL is unset: starting a throwaway PostgreSQL...")
    try:
        with EphemeralPostgres() as server:
            _quickstart(module, server.url)
    except PostgresUnavailable as ex:
        raise click.ClickException(str(ex)) from None
    click.echo("done; the throwaway server was stopped.")


def _quickstart(module: ModuleType, url: str) -> None:
    task_id = trio.run(module.main, url)
    click.echo(f"\n$ durable-trio tasks show {task_id}")

    async def read() -> tuple[dt.TaskInfo, list[dt.StepInfo]]:
        async with dt.Durable.connect(url, migrate=False) as c:
            return await c.get_task(task_id), await c.steps(task_id)

    show_task(*run(read))


def _quickstart_path() -> Path:
    """Inside an installed wheel (packaged there), or at the top of a source checkout."""
    package = Path(__file__).resolve().parents[1]
    for path in (
        package / "examples" / "quickstart.py",
        package.parents[1] / "examples" / "quickstart.py",
    ):
        if path.exists():
            return path
    raise click.ClickException(f"examples/quickstart.py is not in the package ({package})")


def _load_quickstart() -> ModuleType:
    path = _quickstart_path()
    spec = importlib.util.spec_from_file_location("durable_trio_quickstart", path)
    if spec is None or spec.loader is None:
        raise click.ClickException(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
