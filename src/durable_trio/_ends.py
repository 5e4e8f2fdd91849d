"""How `wait_result` learns that a task ended, on every client.

Workers announce ended tasks on a channel (sql/functions/notify_end.sql). Each client
opens one connection of its own that LISTENs there, at its first `wait_result`, shared by
all its waiters: the pool's connections stay free for spawns. At any time one waiter
reads that connection (the pumper) and wakes the waiters of the tasks it sees announced;
when it is done, another takes over. A waiter still reads its task every `SAFETY_POLL`
seconds, and every waiter reads again when the listening connection is replaced
(notifications sent meanwhile are lost): polling is only the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, suppress
from typing import Any

import psycopg
import trio
from psycopg import sql

from ._clientcore import END_CHANNEL, Waiting, Watcher, Watchers
from ._db import CONNECT_ERRORS, CONNECTION_LOST, TrioConnection, listening

__all__ = ["AsyncEnds", "AsyncioEnds", "BlockingEnds", "TrioEnds"]

log = logging.getLogger("durable_trio.client")

LISTEN = sql.SQL("LISTEN {}").format(sql.Identifier(END_CHANNEL))
# What a listening connection that went away raises while it is read.
LOST: tuple[type[BaseException], ...] = (*CONNECTION_LOST, trio.ClosedResourceError)
# What opening the listening connection raises when the database cannot be reached.
UNREACHABLE: tuple[type[BaseException], ...] = (*CONNECT_ERRORS, *CONNECTION_LOST)


class _EventWatcher(Watcher):
    """A waiter of a single-threaded client, asleep on an event of its library."""

    event: Any = None

    def wake(self) -> None:
        super().wake()
        self.nudge()

    def nudge(self) -> None:
        if self.event is not None:
            self.event.set()


class AsyncEnds(ABC):
    """The trio and asyncio clients' listener: their waiters share one thread, so plain
    flags say who pumps. Subclasses give the library's own connection, clock and events."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.watchers = Watchers(schema)
        self._conn: Any = None
        self._pumping = False
        self._closed = False
        self._lock = self._new_lock()

    @asynccontextmanager
    async def watch(self, waiting: Waiting) -> AsyncIterator[Watcher]:
        """Register interest in the task, listening before the caller's first read (so no
        end is missed between that read and the wait); `WaitTimeout` once the waiting's
        limit is reached, whatever the block is doing."""
        watcher = _EventWatcher(waiting.task_id)
        self.watchers.add(watcher)
        try:
            async with self._deadline(waiting.limit):
                await self._listening()
                watcher.ended = False  # a new connection woke everyone: the first read follows
                yield watcher
        except _Expired:
            raise waiting.timed_out() from None
        finally:
            self.watchers.remove(watcher)

    async def wait(self, watcher: Watcher, timeout: float) -> None:
        """Return once `watcher`'s task was announced, the listening connection was
        replaced, or after `timeout` seconds: the caller reads the task again (`watch`
        stops it at the waiting's limit)."""
        assert isinstance(watcher, _EventWatcher)
        deadline = self._now() + timeout
        while not watcher.ended and (left := deadline - self._now()) > 0:
            if self._pumping:
                watcher.event = self._new_event()
                await self._wait_event(watcher.event, left)
                continue
            self._pumping = True
            try:
                await self._pump(watcher, deadline)
            finally:
                self._pumping = False
                self.watchers.nudge_all()  # someone else reads the connection now
        watcher.ended = False

    async def _pump(self, watcher: Watcher, deadline: float) -> None:
        while (left := deadline - self._now()) > 0:
            conn = await self._listening()  # a new connection wakes every waiter
            if watcher.ended:
                return
            if conn is None and self._closed:
                watcher.wake()  # the client closed: its next read says so
            elif conn is None:
                await self._sleep(left)  # the database is away: until the safety poll
            if conn is None:
                return
            try:
                payloads = await self._next(conn, left)
            except LOST as ex:
                log.info("listening connection lost (%s): waiters read their tasks again", ex)
                if self._conn is conn:  # the next _listening reconnects and wakes all
                    await self._drop()
                continue
            for payload in payloads:
                self.watchers.announce(payload)

    async def _listening(self) -> Any:
        """The listening connection, (re)opened if need be; None if the database cannot
        be reached now (the waiters poll)."""
        async with self._lock:
            if self._conn is not None and self._usable(self._conn):
                return self._conn
            await self._drop()
            if self._closed:
                return None
            try:
                self._conn = await self._open()
            except UNREACHABLE as ex:
                log.info("cannot listen for ended tasks (%s): waiters poll", ex)
                return None
            self.watchers.wake_all()
            return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(*LOST):
                await self._close(conn)

    async def aclose(self) -> None:
        self._closed = True
        await self._drop()

    @abstractmethod
    def _deadline(self, seconds: float) -> AbstractAsyncContextManager[None]:
        """Stop the block after `seconds` (inf: never), raising `_Expired`."""

    @abstractmethod
    def _new_lock(self) -> Any: ...

    @abstractmethod
    def _new_event(self) -> Any: ...

    @abstractmethod
    def _now(self) -> float: ...

    @abstractmethod
    async def _sleep(self, seconds: float) -> None: ...

    @abstractmethod
    async def _wait_event(self, event: Any, timeout: float) -> None: ...

    @abstractmethod
    async def _open(self) -> Any: ...

    @abstractmethod
    async def _close(self, conn: Any) -> None: ...

    @abstractmethod
    def _usable(self, conn: Any) -> bool: ...

    @abstractmethod
    async def _next(self, conn: Any, timeout: float) -> list[str]:
        """The payloads of the next notifications on END_CHANNEL (none after `timeout`)."""


class _Expired(Exception):
    """A waiting's limit was reached (`watch` says which task)."""


class TrioEnds(AsyncEnds):
    @asynccontextmanager
    async def _deadline(self, seconds: float) -> AsyncIterator[None]:
        with trio.move_on_after(seconds) as scope:
            yield
        if scope.cancelled_caught:
            raise _Expired

    def _new_lock(self) -> Any:
        return trio.Lock()

    def _new_event(self) -> Any:
        return trio.Event()

    def _now(self) -> float:
        return trio.current_time()

    async def _sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    async def _wait_event(self, event: Any, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await event.wait()

    async def _open(self) -> TrioConnection:
        return await listening(self.url, (END_CHANNEL,))

    async def _close(self, conn: Any) -> None:
        with trio.CancelScope(shield=True):
            await conn.close()

    def _usable(self, conn: Any) -> bool:
        return bool(conn.healthy)

    async def _next(self, conn: Any, timeout: float) -> list[str]:
        with trio.move_on_after(timeout):
            notes = await conn.wait_notifies()
            encoding = conn.pgconn._encoding
            return [n.extra.decode(encoding) for n in notes if n.relname == END_CHANNEL.encode()]
        return []


class AsyncioEnds(AsyncEnds):
    @asynccontextmanager
    async def _deadline(self, seconds: float) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(None if math.isinf(seconds) else seconds) as scope:
                yield
        except TimeoutError:
            if scope.expired():
                raise _Expired from None
            raise

    def _new_lock(self) -> Any:
        return asyncio.Lock()

    def _new_event(self) -> Any:
        return asyncio.Event()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _wait_event(self, event: Any, timeout: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def _open(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        try:
            await conn.execute(LISTEN)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _close(self, conn: Any) -> None:
        await conn.close()

    def _usable(self, conn: Any) -> bool:
        return not (conn.closed or conn.broken)

    async def _next(self, conn: Any, timeout: float) -> list[str]:
        # Read to the generator's end (stop_after): leaving it early would hold its lock.
        notes = [n async for n in conn.notifies(timeout=timeout, stop_after=1)]
        return [n.payload for n in notes if n.channel == END_CHANNEL]


class _TimedWatcher(Watcher):
    def __init__(self, waiting: Waiting, deadline: float) -> None:
        super().__init__(waiting.task_id)
        self.waiting = waiting
        self.deadline = deadline


class BlockingEnds:
    """The blocking client's listener: its waiters are threads, so one condition guards
    the watchers and says who pumps."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.watchers = Watchers(schema)
        self._cond = threading.Condition()
        self._connecting = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._pumping = False
        self._closed = False

    @contextmanager
    def watch(self, waiting: Waiting) -> Iterator[_TimedWatcher]:
        """As `AsyncEnds.watch`, with the limit checked by `wait`."""
        watcher = _TimedWatcher(waiting, time.monotonic() + waiting.limit)
        with self._cond:
            self.watchers.add(watcher)
        try:
            self._listening()
            with self._cond:
                watcher.ended = False
            yield watcher
        finally:
            with self._cond:
                self.watchers.remove(watcher)

    def wait(self, watcher: _TimedWatcher, timeout: float) -> None:
        """As `AsyncEnds.wait`; `WaitTimeout` if the waiting's limit has passed."""
        if time.monotonic() >= watcher.deadline:
            raise watcher.waiting.timed_out()
        deadline = min(time.monotonic() + timeout, watcher.deadline)
        with self._cond:
            while not watcher.ended and (left := deadline - time.monotonic()) > 0:
                if self._pumping:
                    self._cond.wait(left)
                    continue
                self._pumping = True
                self._cond.release()
                try:
                    self._pump(watcher, deadline)
                finally:
                    self._cond.acquire()
                    self._pumping = False
                    self._cond.notify_all()  # someone else reads the connection now
            watcher.ended = False

    def _pump(self, watcher: Watcher, deadline: float) -> None:
        while (left := deadline - time.monotonic()) > 0:
            conn = self._listening()  # a new connection wakes every waiter
            with self._cond:
                if watcher.ended:
                    return
            if conn is None and self._closed:
                with self._cond:
                    watcher.wake()  # the client closed: its next read says so
            elif conn is None:
                time.sleep(left)  # the database is away: until the safety poll
            if conn is None:
                return
            try:
                notes = list(conn.notifies(timeout=left, stop_after=1))
            except CONNECTION_LOST as ex:
                log.info("listening connection lost (%s): waiters read their tasks again", ex)
                with self._connecting:
                    if self._conn is conn:  # the next _listening reconnects and wakes all
                        self._drop()
                continue
            with self._cond:
                for note in notes:
                    if note.channel == END_CHANNEL:
                        self.watchers.announce(note.payload)
                self._cond.notify_all()

    def _listening(self) -> psycopg.Connection[Any] | None:
        with self._connecting:
            conn = self._conn
            if conn is not None and not (conn.closed or conn.broken):
                return conn
            self._drop()
            if self._closed:
                return None
            try:
                conn = psycopg.connect(self.url, autocommit=True)
                try:
                    conn.execute(LISTEN)
                except BaseException:
                    conn.close()
                    raise
            except UNREACHABLE as ex:
                log.info("cannot listen for ended tasks (%s): waiters poll", ex)
                return None
            self._conn = conn
            with self._cond:
                self.watchers.wake_all()
                self._cond.notify_all()
            return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(*CONNECTION_LOST):
                conn.close()

    def close(self) -> None:
        self._closed = True
        self._drop()
