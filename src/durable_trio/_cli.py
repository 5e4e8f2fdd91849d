"""Command line: `python -m durable_trio quickstart | migrate | postgres`."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import trio

from ._client import URL_ENV, Durable
from ._ephemeral import EphemeralPostgres, PostgresUnavailable
from ._errors import DurableError


def _quickstart_path() -> Path:
    """Inside an installed wheel (packaged there), or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for path in (
        here / "examples" / "quickstart.py",
        here.parents[1] / "examples" / "quickstart.py",
    ):
        if path.exists():
            return path
    raise SystemExit(f"examples/quickstart.py is neither in the package nor next to it ({here})")


def _load_quickstart() -> ModuleType:
    path = _quickstart_path()
    spec = importlib.util.spec_from_file_location("durable_trio_quickstart", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quickstart() -> int:
    module = _load_quickstart()
    url = os.environ.get(URL_ENV)
    if url:
        trio.run(module.main, url)
        return 0
    print("DURABLE_DATABASE_URL is unset: starting a throwaway PostgreSQL...", flush=True)
    try:
        with EphemeralPostgres() as server:
            trio.run(module.main, server.url)
    except PostgresUnavailable as ex:
        print(f"error: {ex}", file=sys.stderr)
        return 2
    print("done; the throwaway server was stopped.")
    return 0


def migrate(url: str | None, schema: str) -> int:
    async def run() -> list[int]:
        async with Durable.connect(url, schema=schema, migrate=False) as client:
            return await client.migrate()

    applied = trio.run(run)
    print(f"applied migrations {applied}" if applied else "schema is up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="durable-trio")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("quickstart", help="run the quickstart workflow (throwaway Postgres if needed)")
    mig = sub.add_parser("migrate", help="create or upgrade the schema")
    mig.add_argument("--url", default=None, help=f"database URL (default: ${URL_ENV})")
    mig.add_argument("--schema", default="durable", help="schema name (default: durable)")
    sub.add_parser("postgres", help="start a throwaway PostgreSQL and print its URL")
    args = parser.parse_args(argv)
    try:
        if args.command == "quickstart":
            return quickstart()
        if args.command == "migrate":
            return migrate(args.url, args.schema)
    except DurableError as ex:  # a bad URL, schema name, role...: one line, no traceback
        print(f"error: {type(ex).__name__}: {ex}", file=sys.stderr)
        return 2
    from ._ephemeral import main as postgres_main

    return postgres_main([])


if __name__ == "__main__":
    raise SystemExit(main())
