"""pytest fixtures for testing durable_trio tasks against a real PostgreSQL.

Loaded automatically wherever durable_trio is installed (entry point ``pytest11``); the
async fixtures need pytest-trio (``trio_mode = true``, or ``@pytest.mark.trio``).

- ``durable_server`` (session): the URL of a server: ``$DURABLE_TEST_DATABASE_URL`` when
  set, else a throwaway `EphemeralPostgres` started once for the session (it needs
  PostgreSQL's ``initdb`` and ``pg_ctl``; without them the tests fail, they never skip).
- ``durable_schema``: a fresh schema name for one test, dropped with everything in it
  after the test.
- ``durable_client``: a `Durable` on that schema (queue ``"default"``), migrated.
- ``durable_clock``: the `DatabaseClock` of that schema (``now()``, ``advance(by)``).

See docs/testing.md.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from psycopg import sql

from .._client import Durable
from .._ephemeral import EphemeralPostgres, PostgresUnavailable
from . import DatabaseClock

__all__ = ["durable_client", "durable_clock", "durable_schema", "durable_server"]

URL_ENV = "DURABLE_TEST_DATABASE_URL"


@pytest.fixture(scope="session")
def durable_server() -> Iterator[str]:
    """The URL of the PostgreSQL server the tests use (see the module docstring)."""
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    try:
        server = EphemeralPostgres(fast=True).start()
    except PostgresUnavailable as ex:
        pytest.fail(
            f"no PostgreSQL for the tests: {ex}\n"
            f"Set {URL_ENV}=postgresql://user:password@host/dbname to use a running server.",
            pytrace=False,
        )
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def durable_schema(durable_server: str) -> Iterator[str]:
    """A schema name no other test uses; the schema is dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(durable_server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
async def durable_client(durable_server: str, durable_schema: str) -> AsyncIterator[Durable]:
    """A client on the test's own schema (created and migrated), queue ``"default"``."""
    async with Durable.connect(durable_server, queue="default", schema=durable_schema) as client:
        yield client


@pytest.fixture
async def durable_clock(durable_client: Durable) -> DatabaseClock:
    """The database clock of `durable_client`'s schema."""
    return DatabaseClock(durable_client)
