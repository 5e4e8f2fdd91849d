"""The trio <-> psycopg bridge: cancellation, the pool, the listener, URL redaction.

These exercise psycopg's internal wait hook directly (see the _db module docstring), so a
psycopg upgrade that changes it fails here first.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import attrs
import psycopg
import pytest
import trio
from psycopg import pq, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import durable_trio as dt
from durable_trio._db import Listener, Pool, TrioConnection, connect, redact_url


async def backend_state(url: str, pid: int) -> list[dict[str, Any]]:
    """What the server says backend `pid` is doing, seen from another connection."""
    conn = await connect(url)
    try:
        cur = await conn.execute("SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,))
        return await cur.fetchall()
    finally:
        await conn.close()


async def sleeping_backends(url: str) -> int:
    conn = await connect(url)
    try:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE state = 'active' AND query LIKE 'select pg_sleep(10)%%'"
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row["n"])
    finally:
        await conn.close()


# -- cancellation ---------------------------------------------------------------------


async def test_cancel_scope_interrupts_a_query(pg_url: str) -> None:
    conn = await connect(pg_url)
    try:
        assert isinstance(conn, TrioConnection)
        pid = conn.info.backend_pid
        finished = False
        with trio.move_on_after(0.2) as scope:
            await conn.execute("select pg_sleep(10)")
            finished = True
        assert scope.cancelled_caught
        assert not finished
        # The server-side query was cancelled, not left running.
        (activity,) = await backend_state(pg_url, pid)
        assert activity["state"] == "idle"
        assert await sleeping_backends(pg_url) == 0
        # The connection is usable at once.
        assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        cur = await conn.execute("select 1 AS one")
        assert await cur.fetchone() == {"one": 1}
        assert conn.info.backend_pid == pid
    finally:
        await conn.close()


async def test_cancelled_query_inside_a_transaction_needs_a_rollback(pg_url: str) -> None:
    conn = await connect(pg_url, autocommit=False)
    try:
        await conn.execute("select 1")
        assert conn.pgconn.transaction_status == pq.TransactionStatus.INTRANS
        with trio.move_on_after(0.2) as scope:
            await conn.execute("select pg_sleep(10)")
        assert scope.cancelled_caught
        assert conn.pgconn.transaction_status == pq.TransactionStatus.INERROR
        (activity,) = await backend_state(pg_url, conn.info.backend_pid)
        assert activity["state"] == "idle in transaction (aborted)"
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            await conn.execute("select 1")
        await conn.rollback()
        cur = await conn.execute("select 2 AS two")
        assert await cur.fetchone() == {"two": 2}
    finally:
        await conn.close()


async def test_cancel_inside_a_transaction_block(pg_url: str, schema: str) -> None:
    conn = await connect(pg_url)
    table = sql.SQL("{}.t").format(sql.Identifier(schema))
    try:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        await conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(table))
        with trio.move_on_after(0.2) as scope:
            async with conn.transaction():
                await conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(table))
                await conn.execute("select pg_sleep(10)")
        assert scope.cancelled_caught
        assert await sleeping_backends(pg_url) == 0
        # The block's rollback ran although the scope was cancelled: the connection is
        # out of the transaction, in psycopg's bookkeeping too.
        assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        async with conn.transaction():
            await conn.execute(sql.SQL("INSERT INTO {} VALUES (2)").format(table))
        cur = await conn.execute(sql.SQL("SELECT x FROM {}").format(table))
        assert await cur.fetchall() == [{"x": 2}]
    finally:
        await conn.close()


async def test_cancelled_transaction_from_the_pool_is_returned_clean(pg_url: str) -> None:
    """The pattern Store uses for ctx.transaction: pool.acquire() + conn.transaction()."""
    pool = Pool(pg_url, max_size=1)
    try:
        with trio.move_on_after(0.2) as scope:
            async with pool.acquire() as conn, conn.transaction():
                first = conn
                await conn.execute("select pg_sleep(10)")
        # trio.Cancelled came out (caught by the scope), not a psycopg error.
        assert scope.cancelled_caught
        assert pool._idle == [first]
        async with pool.acquire() as conn:
            assert conn is first
            async with conn.transaction():
                cur = await conn.execute("select 1 AS one")
                assert await cur.fetchone() == {"one": 1}
    finally:
        await pool.aclose()


async def test_commit_still_happens_when_cancelled_at_the_end_of_the_block(
    pg_url: str, schema: str
) -> None:
    conn = await connect(pg_url)
    table = sql.SQL("{}.t").format(sql.Identifier(schema))
    try:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        await conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(table))
        with trio.CancelScope() as scope:
            async with conn.transaction():
                await conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(table))
                # Cancelled with no checkpoint before the block ends: the block completed,
                # so its commit must not be lost half-way.
                scope.cancel()
        assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        cur = await conn.execute(sql.SQL("SELECT x FROM {}").format(table))
        assert await cur.fetchall() == [{"x": 1}]
    finally:
        await conn.close()


async def test_queries_still_work_after_many_cancellations(pg_url: str) -> None:
    conn = await connect(pg_url)
    try:
        for _ in range(5):
            with trio.move_on_after(0.05) as scope:
                await conn.execute("select pg_sleep(10)")
            assert scope.cancelled_caught
        cur = await conn.execute("select %s::int AS n", (41,))
        assert await cur.fetchone() == {"n": 41}
        assert await sleeping_backends(pg_url) == 0
    finally:
        await conn.close()


async def test_plain_queries_and_errors(pg_url: str) -> None:
    conn = await connect(pg_url)
    try:
        cur = await conn.execute("select generate_series(1, 3) AS n")
        assert [r["n"] for r in await cur.fetchall()] == [1, 2, 3]
        with pytest.raises(psycopg.errors.DivisionByZero):
            await conn.execute("select 1 / 0")
        # Autocommit: an error does not leave a transaction behind.
        assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
        cur = await conn.execute("select 'ok' AS s")
        assert await cur.fetchone() == {"s": "ok"}
    finally:
        await conn.close()


# -- the pool ---------------------------------------------------------------------------


async def test_pool_rolls_back_a_connection_returned_in_a_transaction(
    pg_url: str, schema: str
) -> None:
    pool = Pool(pg_url, max_size=1)
    table = sql.SQL("{}.t").format(sql.Identifier(schema))
    try:
        async with pool.acquire() as conn:
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            await conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(table))
        async with pool.acquire() as conn:
            first = conn
            await conn.execute("BEGIN")
            await conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(table))
            assert conn.pgconn.transaction_status == pq.TransactionStatus.INTRANS
        async with pool.acquire() as conn:
            assert conn is first  # kept, after a rollback
            assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
            cur = await conn.execute(sql.SQL("SELECT count(*) AS n FROM {}").format(table))
            assert await cur.fetchone() == {"n": 0}
    finally:
        await pool.aclose()


async def test_pool_survives_a_cancelled_query(pg_url: str) -> None:
    pool = Pool(pg_url, max_size=1)
    try:
        with trio.move_on_after(0.2) as scope:
            async with pool.acquire() as conn:
                await conn.execute("BEGIN")
                await conn.execute("select pg_sleep(10)")
        assert scope.cancelled_caught
        async with pool.acquire() as conn:
            assert conn.pgconn.transaction_status == pq.TransactionStatus.IDLE
            cur = await conn.execute("select 1 AS one")
            assert await cur.fetchone() == {"one": 1}
        assert await sleeping_backends(pg_url) == 0
    finally:
        await pool.aclose()


async def test_pool_discards_a_closed_connection(pg_url: str) -> None:
    pool = Pool(pg_url, max_size=1)
    try:
        async with pool.acquire() as conn:
            first, first_pid = conn, conn.info.backend_pid
            await conn.close()
        async with pool.acquire() as conn:
            assert conn is not first
            assert not conn.closed
            assert conn.info.backend_pid != first_pid
            cur = await conn.execute("select 1 AS one")
            assert await cur.fetchone() == {"one": 1}
    finally:
        await pool.aclose()


async def test_pool_replaces_a_connection_the_server_killed(pg_url: str) -> None:
    """A connection the server ended while it was idle in the pool (a restart,
    pg_terminate_backend, an idle timeout) is replaced before its next user gets it."""
    pool = Pool(pg_url, max_size=1)
    try:
        async with pool.acquire() as conn:
            pid = conn.info.backend_pid
        await terminate(pg_url, [pid])
        async with pool.acquire() as conn:
            assert conn.info.backend_pid != pid
            cur = await conn.execute("select 1 AS one")
            assert await cur.fetchone() == {"one": 1}
    finally:
        await pool.aclose()


async def terminate(url: str, pids: list[int]) -> None:
    """End these backends, and wait until they are gone (their goodbye sent)."""
    killer = await connect(url)
    try:
        for pid in pids:
            await killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        while True:
            cur = await killer.execute(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            )
            row = await cur.fetchone()
            if row is not None and row["n"] == 0:
                return
            await trio.sleep(0.01)
    finally:
        await killer.close()


async def test_pool_bounds_concurrent_connections(pg_url: str) -> None:
    pool = Pool(pg_url, max_size=2)
    inside = 0
    most = 0

    async def use() -> None:
        nonlocal inside, most
        async with pool.acquire() as conn:
            inside += 1
            most = max(most, inside)
            await conn.execute("select pg_sleep(0.01)")
            inside -= 1

    try:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(use)
        assert most == 2
        assert len(pool._idle) <= 2
    finally:
        await pool.aclose()
    with pytest.raises(dt.DatabaseUnavailable):
        async with pool.acquire():
            pass


# -- URLs and connection errors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://ann:s3cret@db.example:5432/app", "postgresql://ann:***@db.example:5432/app"),
        (
            "postgres://ann:s3cret@db.example/app?sslmode=require",
            "postgres://ann:***@db.example/app?sslmode=require",
        ),
        ("postgresql://ann@db.example/app", "postgresql://ann@db.example/app"),
        ("postgresql:///app?host=/tmp", "postgresql:///app?host=/tmp"),
        (
            "host=db.example user=ann password=s3cret dbname=app",
            "host=db.example user=ann password=*** dbname=app",
        ),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    redacted = redact_url(url)
    assert redacted == expected
    assert "s3cret" not in redacted


def test_redact_url_password_in_query_string() -> None:
    redacted = redact_url("postgresql://db.example/app?user=ann&password=s3cret")
    assert "s3cret" not in redacted


async def test_bad_port_raises_database_unavailable_redacted() -> None:
    url = "postgresql://ann:s3cret@127.0.0.1:1/app?connect_timeout=5"
    with pytest.raises(dt.DatabaseUnavailable) as caught:
        await connect(url)
    message = str(caught.value)
    assert "s3cret" not in message
    assert "ann:***@127.0.0.1:1" in message
    assert caught.value.__cause__ is None or "s3cret" not in str(caught.value.__cause__)


async def test_client_connect_to_a_bad_port_is_redacted() -> None:
    url = "postgresql://ann:s3cret@127.0.0.1:1/app?connect_timeout=5"
    with pytest.raises(dt.DatabaseUnavailable) as caught:
        async with dt.Durable.connect(url, schema="unused"):
            pytest.fail("connected to a closed port")
    assert "s3cret" not in str(caught.value)
    assert "***" in str(caught.value)


async def test_bad_password_is_redacted(pg_url: str) -> None:
    # The test server may trust local connections; either way no secret may leak.
    bad = psycopg.conninfo.make_conninfo(pg_url, password="s3cret-pw", user="nobody_here")
    with pytest.raises(dt.DatabaseUnavailable) as caught:
        await connect(bad)
    assert "s3cret-pw" not in str(caught.value)


# -- the listener ----------------------------------------------------------------------------


async def test_listener_receives_and_survives_a_killed_connection(pg_url: str) -> None:
    got: list[tuple[str, str]] = []
    arrived = trio.Event()
    reconnects = 0
    reconnected = trio.Event()

    def on_notify(channel: str, payload: str) -> None:
        got.append((channel, payload))
        arrived.set()

    def on_reconnect() -> None:
        nonlocal reconnects
        reconnects += 1
        if reconnects == 2:
            reconnected.set()

    listener = Listener(pg_url, ["chan_a", "chan b"], on_notify, on_reconnect)
    sender = await connect(pg_url)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(listener.run)
                assert listener.connected
                await sender.execute("SELECT pg_notify('chan b', 'hello')")
                await arrived.wait()
                assert got == [("chan b", "hello")]

                # Kill the listening backend: the listener reconnects and listens again.
                cur = await sender.execute(
                    "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%%'"
                    " AND pid <> pg_backend_pid()"
                )
                pids = [r["pid"] for r in await cur.fetchall()]
                assert pids
                for pid in pids:
                    await sender.execute("SELECT pg_terminate_backend(%s)", (pid,))
                await reconnected.wait()
                arrived = trio.Event()
                await sender.execute("SELECT pg_notify('chan_a', 'again')")
                await arrived.wait()
                assert got[-1] == ("chan_a", "again")
                nursery.cancel_scope.cancel()
    finally:
        await sender.close()


async def test_a_cancelled_scope_sends_no_statement(pg_url: str, schema: str) -> None:
    """Pooled connections and statements are taken without a schedule point when free,
    but never from a cancelled scope: nothing is sent there."""
    pool = Pool(pg_url, max_size=1)
    table = sql.SQL("{}.t").format(sql.Identifier(schema))
    insert = sql.SQL("INSERT INTO {} VALUES (1)").format(table)
    try:
        async with pool.acquire() as conn:
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            await conn.execute(sql.SQL("CREATE TABLE {} (x int)").format(table))
        with trio.CancelScope() as scope:
            scope.cancel()
            async with pool.acquire() as conn:
                await conn.execute(insert)
        assert scope.cancelled_caught
        async with pool.acquire() as conn:
            with trio.CancelScope() as again:
                again.cancel()
                await conn.execute(insert)  # the connection's own lock refuses it too
            assert again.cancelled_caught
            cur = await conn.execute(sql.SQL("SELECT count(*) AS n FROM {}").format(table))
            assert await cur.fetchall() == [{"n": 0}]
    finally:
        await pool.aclose()


# -- a server that stops answering ------------------------------------------------------

# A TCP forwarder to the test server, in a process of its own so that SIGSTOP makes the
# server look hung (connections still accepted by the kernel, nothing ever answered)
# without touching the server the other tests share.
FORWARDER = """
import socket, sys, threading
kind, target = sys.argv[1], sys.argv[2]
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(16)
print(listener.getsockname()[1], flush=True)
def pump(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
while True:
    client, _ = listener.accept()
    if kind == "unix":
        server = socket.socket(socket.AF_UNIX)
        server.connect(target)
    else:
        host, port = target.rsplit(":", 1)
        server = socket.create_connection((host, int(port)))
    for a, b in ((client, server), (server, client)):
        threading.Thread(target=pump, args=(a, b), daemon=True).start()
"""


@attrs.define
class Forwarder:
    """The test server's URL through a forwarder process that `hang` stops (SIGSTOP),
    with a watchdog process that wakes it again after 20 s whatever happens, so that a
    test never hangs for good."""

    url: str
    proc: subprocess.Popen[str]
    watchdog: subprocess.Popen[bytes] | None = None

    def hang(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        self.watchdog = subprocess.Popen(["sh", "-c", f"sleep 20; kill -CONT {self.proc.pid}"])

    def still_hung(self) -> bool:
        """Whether the forwarder is still stopped (the watchdog did not wake it)."""
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.fixture
def forwarded(pg_url: str) -> Iterator[Forwarder]:
    params = conninfo_to_dict(pg_url)
    host, port = str(params.get("host") or "/tmp"), str(params.get("port") or 5432)
    unix = host.startswith("/")
    target = f"{host}/.s.PGSQL.{port}" if unix else f"{host}:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-c", FORWARDER, "unix" if unix else "tcp", target],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    with proc.stdout:
        local = int(proc.stdout.readline())
    forwarder = Forwarder(make_conninfo(pg_url, host="127.0.0.1", port=str(local)), proc)
    try:
        yield forwarder
    finally:
        for one in (forwarder.watchdog, proc):
            if one is not None:
                one.kill()
                one.wait()


async def test_cancelling_a_query_to_a_hung_server_leaves_the_process_running(
    forwarded: Forwarder,
) -> None:
    """The server-side cancel must not block the process: libpq's blocking cancel held
    the GIL while it waited for the server, and so stopped trio (and every thread) until
    the server answered. Here the server never does, unless the watchdog wakes it."""
    conn = await connect(forwarded.url)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.05)
            ticks += 1

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            with trio.move_on_after(0.5) as scope:
                query = conn.execute("select pg_sleep(30)")
                forwarded.hang()  # from now on nothing answers: the query is on its way
                await query
            assert scope.cancelled_caught
            nursery.cancel_scope.cancel()
        # Given up on (the connection closed) while the server was still hung, and
        # trio kept running meanwhile.
        assert forwarded.still_hung()
        assert conn.closed
        assert ticks > 10
    finally:
        await conn.close()
