"""Database access from trio: a trio-native psycopg connection, a small pool, a listener.

psycopg 3 has no trio support of its own. Its protocol logic is written as generators that
say "wait until the socket is readable/writable"; `AsyncConnection.wait` drives them with
asyncio. `TrioConnection` drives the same generators with trio's `wait_readable` /
`wait_writable`, so a trio cancel scope really interrupts a query: the server-side query is
cancelled and the connection stays usable.

This leans on psycopg internals (`wait`, `_connect_gen`, the generator protocol), which is
why pyproject pins psycopg to a tested minor range and tests/integration/test_db.py
exercises the hook directly.

Nothing above this module knows that psycopg is asyncio-flavoured.
"""

from __future__ import annotations

import logging
import math
import re
import select
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

import attrs
import psycopg
import trio
from psycopg import capabilities, pq
from psycopg import errors as pg_errors
from psycopg._conninfo_utils import is_ip_address, split_attempts
from psycopg.abc import PQGen, PQGenConn
from psycopg.conninfo import conninfo_to_dict, make_conninfo, timeout_from_conninfo
from psycopg.generators import notifies as notifies_gen
from psycopg.rows import dict_row
from psycopg.waiting import READY_R, READY_W, WAIT_R, WAIT_W

from ._core.backoff import BackoffPolicy
from ._errors import DatabaseUnavailable
from ._retrying import retrying

__all__ = ["Listener", "Pool", "TrioConnection", "connect", "redact_url"]

log = logging.getLogger("durable_trio.sql")

Row = dict[str, Any]
RV = TypeVar("RV")

# How long a cancelled query may take to acknowledge the cancel before we give up on
# the connection and close it.
_CANCEL_GRACE = 5.0

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    OSError,
)
# What a failed connection attempt raises: a bad URL, or no server there.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (psycopg.ProgrammingError, *CONNECTION_ERRORS)
# A transaction the server rolled back on its own, worth running again as it was.
TRANSIENT = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
# What "the database went away" looks like to code above this module.
CONNECTION_LOST: tuple[type[BaseException], ...] = (DatabaseUnavailable, *CONNECTION_ERRORS)
# What every client raises when it is used after it was closed.
CLIENT_CLOSED = (
    "the client is closed (its connect block ended, or close() was called): "
    "open another with Durable.connect"
)
# The listener's pauses between attempts to reconnect (capped by `Listener.max_backoff`).
LISTEN_BACKOFF = BackoffPolicy(first=0.05, cap=5.0)


def redact_url(url: str) -> str:
    """Return `url` with any password replaced by ``***`` (for logs, errors, reprs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable database URL>"
    if parts.scheme.startswith("postgres") and "password=" in parts.query:
        # libpq also takes ?password=... in the query string.
        parts = parts._replace(query=re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query))
        url = urlunsplit(parts)
    if parts.scheme.startswith("postgres") and parts.password is not None:
        # Keep everything after the '@' as written (parts.port raises on "host:notaport").
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    if "password=" in url and not parts.scheme:
        return " ".join("password=***" if w.startswith("password=") else w for w in url.split())
    return url


def _poll_now(fileno: int, events: int) -> int:
    """READY_R/READY_W flags for `fileno` right now (poll: no 1024-descriptor limit)."""
    poller = select.poll()
    poller.register(fileno, events)
    result = 0
    for _, revents in poller.poll(0):
        if revents & (select.POLLIN | select.POLLHUP | select.POLLERR):
            result |= READY_R
        if revents & select.POLLOUT:
            result |= READY_W
    return result


async def _wait_fd(fileno: int, state: int) -> int:
    """Wait until `fileno` is ready for `state` (WAIT_R, WAIT_W or both)."""
    if state == WAIT_R:
        await trio.lowlevel.wait_readable(fileno)
        return READY_R
    if state == WAIT_W:
        await trio.lowlevel.wait_writable(fileno)
        return READY_W
    # Both: a socket being flushed is almost always writable, so poll first and only
    # race the two waits when neither is ready.
    ready = _poll_now(fileno, select.POLLIN | select.POLLOUT)
    if ready:
        return ready
    ready = 0
    async with trio.open_nursery() as nursery:

        async def one(waiter: Any, flag: int) -> None:
            nonlocal ready
            await waiter(fileno)
            ready |= flag
            nursery.cancel_scope.cancel()

        nursery.start_soon(one, trio.lowlevel.wait_readable, READY_R)
        nursery.start_soon(one, trio.lowlevel.wait_writable, READY_W)
    return ready


async def _drive(gen: PQGen[RV], fileno: int) -> RV:
    try:
        state = next(gen)
        while True:
            state = gen.send(await _wait_fd(fileno, state))
    except StopIteration as stop:
        result: RV = stop.value
        return result
    except OSError as ex:
        raise psycopg.OperationalError("connection socket closed") from ex


async def _drive_conn(gen: PQGenConn[RV]) -> RV:
    try:
        fileno, state = next(gen)
        while True:
            fileno, state = gen.send(await _wait_fd(fileno, state))
    except StopIteration as stop:
        result: RV = stop.value
        return result
    except OSError as ex:
        raise psycopg.OperationalError("connection socket closed") from ex


async def _resolve(attempt: dict[str, Any]) -> list[dict[str, Any]]:
    """Resolve a host name with trio (libpq's own lookup would block the event loop)."""
    host = str(attempt.get("host") or "")
    if not host or host.startswith("/") or host[1:2] == ":" or attempt.get("hostaddr"):
        return [attempt]
    if is_ip_address(host):
        return [{**attempt, "hostaddr": host}]
    port = str(attempt.get("port") or 5432)
    if not port.isdigit():
        raise psycopg.ProgrammingError(f"invalid port {port!r}: expected a number")
    infos = await trio.socket.getaddrinfo(host, int(port), type=trio.socket.SOCK_STREAM)
    return [{**attempt, "hostaddr": str(info[4][0])} for info in infos]


class _StatementLock:
    """The lock psycopg takes around each statement of a connection: a `trio.Lock` that,
    free, is taken without a schedule point (the statement then waits on the socket, a
    checkpoint anyway), saving every statement one pass of the scheduler. Still a
    cancellation point: a cancelled scope sends nothing."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def __aenter__(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


class TrioConnection(psycopg.AsyncConnection[Row]):
    """A psycopg `AsyncConnection` whose waits are trio's, with dict rows.

    Cancellation: if the surrounding trio cancel scope fires while a query runs, the
    query is cancelled on the server, the connection is drained back to a usable state
    (a transaction in progress is left aborted: roll it back) and `trio.Cancelled`
    propagates. If the server does not acknowledge within a few seconds the connection
    is closed instead.
    """

    def __init__(self, pgconn: Any, row_factory: Any = dict_row) -> None:
        super().__init__(pgconn, row_factory)
        # asyncio.Lock cannot block under trio; a trio lock serialises users the same way.
        self.lock = _StatementLock()  # type: ignore[assignment]

    @classmethod
    async def connect(cls, conninfo: str = "", *, autocommit: bool = True, **kwargs: Any) -> Self:
        params = conninfo_to_dict(conninfo, **kwargs)
        timeout = timeout_from_conninfo(params) or None
        errors: list[Exception] = []
        for attempt in split_attempts(params):
            try:
                resolved = await _resolve(dict(attempt))
            except OSError as ex:
                errors.append(psycopg.OperationalError(f"cannot resolve host: {ex}"))
                continue
            for one in resolved:
                try:
                    with trio.fail_after(timeout or math.inf):
                        conn = await _drive_conn(cls._connect_gen(make_conninfo("", **one)))
                except trio.TooSlowError:
                    errors.append(psycopg.OperationalError("connection timeout expired"))
                except psycopg.Error as ex:
                    errors.append(ex)
                else:
                    conn._autocommit = autocommit
                    conn.prepare_threshold = 5
                    return conn
        raise errors[-1] if errors else psycopg.OperationalError("no host to connect to")

    async def wait(
        self, gen: PQGen[Any], interval: float = 0.0, timeout: float | None = None
    ) -> Any:
        fileno = self.pgconn.socket
        if timeout is not None:
            with trio.move_on_after(timeout):
                return await self._wait_cancellable(gen, fileno)
            raise pg_errors._WaitTimeout("wait timeout expired")
        return await self._wait_cancellable(gen, fileno)

    async def _wait_cancellable(self, gen: PQGen[Any], fileno: int) -> Any:
        try:
            return await _drive(gen, fileno)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await self._cancel_in_flight(gen, fileno)
            raise

    async def _cancel_in_flight(self, gen: PQGen[Any], fileno: int) -> None:
        """After a trio cancellation mid-query: cancel it server-side and drain the result."""
        if self.pgconn.transaction_status != pq.TransactionStatus.ACTIVE:
            return
        with trio.move_on_after(_CANCEL_GRACE) as scope:
            try:
                await self._cancel_on_server()
                await _drive(gen, fileno)
            except psycopg.Error:
                pass  # QueryCanceled, as intended
        if scope.cancelled_caught or self.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
            log.warning("query did not stop after cancellation: closing connection")
            await self.close()

    async def _cancel_on_server(self) -> None:
        """Ask the server to cancel the query in flight, on trio's event loop. libpq's
        older, blocking cancel holds the GIL while it waits for the server's answer: a
        server that does not answer froze every thread, trio's included, however the
        call was abandoned. The non-blocking one (libpq 17+) is driven like a connect."""
        if not self._should_cancel():
            return
        if capabilities.has_cancel_safe():
            await _drive_conn(self._cancel_gen())
        else:
            await trio.to_thread.run_sync(self.cancel, abandon_on_cancel=True)

    async def close(self) -> None:
        if not self.closed:
            fileno = self.pgconn.socket if self.pgconn.status == pq.ConnStatus.OK else -1
            if fileno >= 0:
                # Wake any task blocked on this socket before the fd goes away.
                trio.lowlevel.notify_closing(fileno)
        await super().close()

    async def wait_notifies(self) -> list[pq.PGnotify]:
        """Block until at least one notification arrives (connection must be idle)."""
        async with self.lock:
            return list(await self.wait(notifies_gen(self.pgconn)))

    @property
    def healthy(self) -> bool:
        return not self.closed and self.pgconn.status == pq.ConnStatus.OK

    @asynccontextmanager
    async def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> AsyncIterator[psycopg.AsyncTransaction]:
        """psycopg's transaction block, whose COMMIT/ROLLBACK also runs when cancelled.

        psycopg's exit first takes the connection lock, which a cancelled trio scope
        refuses at once: the block would be left open in psycopg's bookkeeping and the
        connection unusable (a later rollback() raises ProgrammingError).
        """
        if self._pipeline:  # not used by durable_trio: keep psycopg's own behaviour
            async with psycopg.AsyncConnection.transaction(
                self, savepoint_name, force_rollback
            ) as tx:
                yield tx
            return
        async with _ShieldedExitTransaction(self, savepoint_name, force_rollback) as tx:
            yield tx


class _ShieldedExitTransaction(psycopg.AsyncTransaction):
    async def __aexit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> bool:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(_CANCEL_GRACE):
                return await super().__aexit__(exc_type, exc_val, exc_tb)
            await self._conn.close()
        if exc_val is None:
            raise psycopg.OperationalError("the commit did not complete: connection closed")
        return False


async def connect(url: str, *, autocommit: bool = True) -> TrioConnection:
    """Open one trio-native connection; raise `DatabaseUnavailable` (password redacted)."""
    try:
        return await TrioConnection.connect(url, autocommit=autocommit)
    except CONNECT_ERRORS as ex:
        error = unreachable(url, ex)
    raise error  # outside the handler: see `unreachable`


async def listening(url: str, channels: Iterable[str]) -> TrioConnection:
    """A new connection LISTENing on every channel (closed again if that fails)."""
    conn = await connect(url)
    try:
        for channel in channels:
            await conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
    except BaseException:
        with trio.CancelScope(shield=True):
            await conn.close()
        raise
    return conn


def unreachable(url: str, ex: BaseException) -> DatabaseUnavailable:
    """The error every client raises when it cannot connect (password redacted). Raise it
    after the handler of `ex`, not inside it: psycopg's errors may quote the whole URL,
    password included, and one raised in the handler keeps `ex` as its ``__context__``
    (``from None`` only hides it from tracebacks)."""
    if isinstance(ex, psycopg.ProgrammingError):
        return DatabaseUnavailable(
            f"invalid database URL {redact_url(url)!r}: {_scrub(str(ex), url)}"
        )
    return DatabaseUnavailable(f"cannot connect to {redact_url(url)}: {_scrub(str(ex), url)}")


def too_late(url: str, timeout: float) -> DatabaseUnavailable:
    """The error every client raises when the database did not answer within `timeout`
    seconds of `connect` (password redacted)."""
    return DatabaseUnavailable(f"cannot connect to {redact_url(url)} within {timeout:g}s")


def _scrub(message: str, url: str) -> str:
    try:
        password = urlsplit(url).password
    except ValueError:  # unparseable, yet libpq may quote the whole URL in its message
        found = _URL_PASSWORD.search(url)
        password = found[1] if found else None
    if not password:  # ?password=... or the key=value form
        try:
            value = conninfo_to_dict(url).get("password")
            password = None if value is None else str(value)
        except psycopg.Error:
            password = None
    if password:
        message = message.replace(password, "***")
    return message.strip()


_URL_PASSWORD = re.compile(r"://[^:/@]*:([^@]*)@")


def _alive(conn: TrioConnection) -> bool:
    """Cheap check of an idle connection: one zero-timeout poll, no round trip."""
    return conn.healthy and quiet(conn.pgconn)


def quiet(pgconn: pq.abc.PGconn) -> bool:
    """Whether an idle connection's socket has nothing to read, as a live one has.

    A pooled connection listens to nothing, so the server writes to it on its own only to
    say goodbye: after a server restart, pg_terminate_backend or an idle timeout, a FATAL
    error and then EOF. libpq takes that error as a notice and keeps the connection OK
    until the EOF is read, which may not have arrived yet: anything to read means gone,
    and the connection is discarded instead of failing its next user."""
    try:
        return not _poll_now(pgconn.socket, select.POLLIN)
    except (OSError, psycopg.Error):
        return False


class Pool:
    """A small trio connection pool: bounded, health-checked, reconnecting.

    `acquire()` hands out an autocommit connection. A connection that comes back broken,
    or inside a transaction, is rolled back or discarded, so a caller that was cancelled
    mid-query cannot poison the next user.
    """

    def __init__(self, url: str, *, max_size: int = 10) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.url = url
        self.max_size = max_size
        self._slots = trio.Semaphore(max_size)
        self._idle: list[TrioConnection] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"<Pool {redact_url(self.url)} size={self.max_size} idle={len(self._idle)}>"

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[TrioConnection]:
        if self._closed:
            raise DatabaseUnavailable(CLIENT_CLOSED)
        # A free slot is taken without a schedule point (the query that follows waits on
        # its socket anyway; the yield cost every pooled statement, a checkpoint's write
        # included, one more pass of the scheduler), but still not once cancelled: no
        # statement is sent from a cancelled scope.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            await self._slots.acquire()
        try:
            conn = await self._checkout()
            try:
                yield conn
            finally:
                with trio.CancelScope(shield=True):
                    await self._checkin(conn)
        finally:
            self._slots.release()

    async def _checkout(self) -> TrioConnection:
        while self._idle:
            conn = self._idle.pop()
            if _alive(conn) and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE:
                return conn
            await conn.close()
        return await connect(self.url)

    async def _checkin(self, conn: TrioConnection) -> None:
        if not conn.healthy or self._closed:
            await conn.close()
            return
        status = conn.pgconn.transaction_status
        if status != pq.TransactionStatus.IDLE:
            try:
                with trio.move_on_after(_CANCEL_GRACE):
                    await conn.rollback()
            except CONNECTION_ERRORS:
                pass
            if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                await conn.close()
                return
        self._idle.append(conn)

    async def discard_idle(self) -> None:
        """Close every idle connection (after a database restart they are all dead)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

    async def aclose(self) -> None:
        self._closed = True
        await self.discard_idle()


class Listener:
    """A dedicated LISTEN connection that survives the database going away.

    `run()` keeps the connection open, LISTENs on `channels`, and calls `on_notify(channel,
    payload)` for each notification. When the connection drops it reconnects with
    backoff and calls `on_reconnect()` so the owner can poll for anything it missed.
    `connected` tells whether notifications are currently being received.
    """

    def __init__(
        self,
        url: str,
        channels: Sequence[str],
        on_notify: Any,
        on_reconnect: Any,
        *,
        max_backoff: float = 5.0,
    ) -> None:
        self.url = url
        self.channels = list(channels)
        self.on_notify = on_notify
        self.on_reconnect = on_reconnect
        self.max_backoff = max_backoff
        self.connected = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False

        async def not_yet(ex: BaseException, pause: float) -> None:
            nonlocal started
            log.warning("listener cannot connect (%s); retrying in %.2fs", ex, pause)
            if not started:  # the owner polls meanwhile (`connected` is False)
                started = True
                task_status.started()

        while True:
            conn = await retrying(
                self._listen,
                retry_on=CONNECTION_LOST,
                policy=attrs.evolve(LISTEN_BACKOFF, cap=self.max_backoff),
                on_retry=not_yet,
            )
            try:
                self.connected = True
                self.on_reconnect()
                if not started:
                    started = True
                    task_status.started()
                await self._pump(conn)
            except CONNECTION_ERRORS as ex:
                log.warning("listener connection lost (%s); reconnecting", ex)
            finally:
                self.connected = False
                with trio.CancelScope(shield=True):
                    await conn.close()

    async def _listen(self) -> TrioConnection:
        return await listening(self.url, self.channels)

    async def _pump(self, conn: TrioConnection) -> None:
        while True:
            for note in await conn.wait_notifies():
                encoding = conn.pgconn._encoding
                self.on_notify(note.relname.decode(encoding), note.extra.decode(encoding))
