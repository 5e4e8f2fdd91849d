"""Opening and closing the three clients (trio, blocking, asyncio): `connect`'s timeout,
what a failed connect leaves behind, a client used where it cannot run or after it was
closed. Most cases drive a client from plain blocking test code under its own runner
(trio.run, asyncio.run, or a direct call), as a program would."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import trio
from psycopg_pool import AsyncConnectionPool, ConnectionPool

import durable_trio as dt
import durable_trio.aio
import durable_trio.sync

KINDS = ["trio", "sync", "aio"]
SECRET = "Hunter2-s3cret-pw"

Use = Callable[[Any], Any]  # a call on a client (its coroutine, on the async clients)


def open_and_close(kind: str, url: str, **connect: Any) -> None:
    """Connect a client of `kind` to `url` with `connect`'s arguments, and close it."""
    if kind == "sync":
        durable_trio.sync.Durable.connect(url, **connect).close()
        return

    async def main() -> None:
        client_class = dt.Durable if kind == "trio" else durable_trio.aio.Durable
        async with client_class.connect(url, **connect):
            pass

    if kind == "trio":
        trio.run(main)
    else:
        asyncio.run(main())


def after_close(kind: str, url: str, schema: str, call: Use) -> Any:
    """Open a client, close it, then make `call` on it (awaited on the async clients)."""
    if kind == "sync":
        client = durable_trio.sync.Durable.connect(url, schema=schema)
        client.close()
        return call(client)

    async def main() -> Any:
        client_class = dt.Durable if kind == "trio" else durable_trio.aio.Durable
        async with client_class.connect(url, schema=schema) as client:
            pass
        return await call(client)

    return trio.run(main) if kind == "trio" else asyncio.run(main())


def chain(ex: BaseException) -> Iterator[BaseException]:
    """`ex` and every exception it still refers to, suppressed context included."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [ex]
    while todo:
        one = todo.pop()
        if one is None or id(one) in seen:
            continue
        seen.add(id(one))
        yield one
        todo += [one.__cause__, one.__context__]


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server that takes the connection and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever replies
        port = silent.getsockname()[1]
        # psycopg's shortest connect_timeout: a pool's connection attempt (a thread of a
        # blocking pool, which closing waits for) gives up in two seconds.
        yield f"postgresql://nobody@127.0.0.1:{port}/db?connect_timeout=2"


# -- connect's timeout --------------------------------------------------------------------

BAD_TIMEOUTS = [-1, 0, 0.0, math.nan, math.inf, "5", None, True, 1e300]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
@pytest.mark.parametrize("kind", KINDS)
def test_connect_refuses_a_timeout_that_is_not_a_positive_number(
    kind: str, timeout: Any, pg_url: str, schema: str
) -> None:
    with pytest.raises(dt.InvalidInput, match=r"^timeout must be"):
        open_and_close(kind, pg_url, schema=schema, timeout=timeout)


@pytest.mark.parametrize("kind", KINDS)
def test_connect_gives_up_on_a_silent_server_within_a_short_timeout(
    kind: str, silent_url: str
) -> None:
    """A timeout under a second is kept (psycopg's own connect_timeout counts whole
    seconds, two at least)."""
    with pytest.raises(dt.DatabaseUnavailable, match=r"127\.0\.0\.1.* within 0\.3s"):
        open_and_close(kind, silent_url, timeout=0.3)


@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_a_pool_that_cannot_open_is_database_unavailable_and_closed(
    kind: str, silent_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server answered the first connection, not the pool's: `DatabaseUnavailable`,
    and the pool (whose threads or tasks would go on trying) is closed."""
    module = durable_trio.sync if kind == "sync" else durable_trio.aio
    made: list[Any] = []
    pool_class = ConnectionPool if kind == "sync" else AsyncConnectionPool

    class Recorded(pool_class):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(module, pool_class.__name__, Recorded)
    monkeypatch.setattr(module, "_reachable", _answered if kind == "sync" else _answered_async)
    with pytest.raises(dt.DatabaseUnavailable, match=r"127\.0\.0\.1"):
        open_and_close(kind, silent_url, timeout=0.3)
    assert [pool.closed for pool in made] == [True]


def _answered(url: str, timeout: float) -> None:
    return None


async def _answered_async(url: str, timeout: float) -> None:
    return None


# -- a database URL that cannot be parsed ---------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{SECRET}@[::1/db",
        f"postgresql://app:{SECRET.replace('-', ' ')}@localhost/db?connect_timeout=abc",
    ],
    ids=["unclosed-bracket", "space-in-password"],
)
@pytest.mark.parametrize("kind", KINDS)
def test_an_unparseable_url_keeps_its_password_out_of_every_chained_error(
    kind: str, url: str
) -> None:
    with pytest.raises(dt.DatabaseUnavailable, match="invalid database URL") as info:
        open_and_close(kind, url, timeout=2)
    for one in chain(info.value):
        for secret in (SECRET, SECRET.replace("-", " "), "s3cret"):
            assert secret not in f"{one}{one!r}", type(one).__name__


# -- a client where it cannot run, or closed ------------------------------------------------


async def test_the_asyncio_client_names_the_others_under_trio(pg_url: str) -> None:
    with pytest.raises(dt.ConfigurationError, match=r"this is trio: use durable_trio\.Durable"):
        async with durable_trio.aio.Durable.connect(pg_url):
            pass  # pragma: no cover


TASK_ID = "00000000-0000-7000-8000-000000000001"
CLOSED_CALLS: dict[str, Callable[[Any], Any]] = {
    "list_tasks": lambda client: client.list_tasks(),
    "emit_event": lambda client: client.emit_event("go"),
    "migrate": lambda client: client.migrate(),
    "wait_result": lambda client: client.wait_result(None, TASK_ID, timeout=1),
}


@pytest.mark.parametrize("call", list(CLOSED_CALLS))
@pytest.mark.parametrize("kind", KINDS)
def test_a_closed_client_says_it_is_closed(kind: str, call: str, pg_url: str, schema: str) -> None:
    with pytest.raises(dt.DatabaseUnavailable, match="client is closed"):
        after_close(kind, pg_url, schema, CLOSED_CALLS[call])


# -- registering ------------------------------------------------------------------------------


@dt.task("twice")
async def first(ctx: dt.TaskContext, params: None) -> int:
    return 1


@dt.task("twice")
async def second(ctx: dt.TaskContext, params: None) -> int:
    return 2


@pytest.mark.parametrize("client_class", [dt.Durable, durable_trio.sync.Durable])
def test_register_raises_what_it_documents_for_a_name_taken(client_class: Any) -> None:
    client = client_class("postgresql://localhost/db", queue="q", schema="s", pool_size=1)
    client.register(first)
    with pytest.raises(dt.ConfigurationError, match="'twice' is already registered"):
        client.register(second)
    assert "`ConfigurationError`" in client.register.__doc__


# -- connections the server ended while idle ------------------------------------------------

BACKENDS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
)


def end_other_backends(url: str) -> None:
    """pg_terminate_backend for every other connection to the database (as a server
    restart would), and wait until they are gone."""
    with psycopg.connect(url, autocommit=True) as admin:
        pids = [row[0] for row in admin.execute(BACKENDS)]
        assert pids
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        while admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchone() != (0,):
            time.sleep(0.01)


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_replaces_connections_the_server_ended_while_idle(
    kind: str, pg_url: str, schema: str
) -> None:
    if kind == "sync":
        with durable_trio.sync.Durable.connect(pg_url, schema=schema) as client:
            assert client.list_tasks().items == []
            end_other_backends(pg_url)
            assert client.list_tasks().items == []
        return

    async def main() -> None:
        client_class = dt.Durable if kind == "trio" else durable_trio.aio.Durable
        async with client_class.connect(pg_url, schema=schema) as client:
            assert (await client.list_tasks()).items == []
            end_other_backends(pg_url)
            assert (await client.list_tasks()).items == []

    if kind == "trio":
        trio.run(main)
    else:
        asyncio.run(main())
