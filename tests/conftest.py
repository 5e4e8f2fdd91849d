"""Test harness: one real PostgreSQL per test session, a fresh schema per test.

Uses DURABLE_TEST_DATABASE_URL when set; otherwise starts a throwaway server with the
system's initdb/pg_ctl (durable_trio._ephemeral). No server is a hard failure, never a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest

import durable_trio as dt
from durable_trio._ephemeral import EphemeralPostgres, PostgresUnavailable

URL_ENV = "DURABLE_TEST_DATABASE_URL"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    try:
        server = EphemeralPostgres(fast=True).start()
    except PostgresUnavailable as ex:
        pytest.fail(
            f"No PostgreSQL for the tests: {ex}\n"
            f"Set {URL_ENV}=postgresql://user:pass@host/db to use an existing server.",
            pytrace=False,
        )
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def schema(pg_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(psycopg.sql.Identifier(name))
        )


@pytest.fixture
async def client(pg_url: str, schema: str) -> AsyncIterator[dt.Durable]:
    async with dt.Durable.connect(pg_url, queue="default", schema=schema) as c:
        yield c
