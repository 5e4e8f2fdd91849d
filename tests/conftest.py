"""Test harness: one real PostgreSQL per test session, a fresh schema per test.

The server and the schemas come from durable_trio's own pytest plugin
(durable_trio.testing.pytest_plugin: DURABLE_TEST_DATABASE_URL when set, otherwise a
throwaway server started with the system's initdb/pg_ctl). No server is a hard failure,
never a skip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import durable_trio as dt
from durable_trio.testing import pytest_plugin

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    # Registered by the package's pytest11 entry point once installed; from a bare
    # checkout (PYTHONPATH=src) it is registered here instead.
    if not config.pluginmanager.has_plugin("durable_trio"):
        config.pluginmanager.register(pytest_plugin, "durable_trio")


@pytest.fixture(scope="session")
def pg_url(durable_server: str) -> str:
    return durable_server


@pytest.fixture
def schema(durable_schema: str) -> str:
    return durable_schema


@pytest.fixture
async def client(pg_url: str, schema: str) -> AsyncIterator[dt.Durable]:
    async with dt.Durable.connect(pg_url, queue="default", schema=schema) as c:
        yield c
