"""NOTIFY liveness: with polling effectively disabled (poll_interval=30), an idle worker
must still start spawned tasks, wake event waiters and wake a parent whose child ended,
and it must keep doing so after its LISTEN connection is killed server-side.

These are liveness checks, not speed assertions: ``trio.fail_after(10)`` is far below the
30 s poll, so a pass means a notification woke the worker.

`IdleSpy` tells when the worker is in its quiet idle wait (claimed nothing, nothing is
due, listener connected, nothing in flight): from there only a wake-up (a notification)
makes it claim again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import durable_trio as dt
from durable_trio._store import Store

NO_POLL = dt.WorkerOptions(poll_interval=30, claim_timeout=60)


class IdleSpy:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, worker: dt.Worker) -> None:
        self.worker = worker
        self.quiet = False
        self._changed = trio.Event()
        claim, next_due = Store.claim, Store.next_due
        spy = self

        async def spy_claim(store: Store, *args: Any, **kwargs: Any) -> Any:
            if store is getattr(spy.worker, "_control", None):
                spy.quiet = False
            return await claim(store, *args, **kwargs)

        async def spy_next_due(store: Store, *args: Any, **kwargs: Any) -> Any:
            due = await next_due(store, *args, **kwargs)
            w = spy.worker
            if store is getattr(w, "_control", None):
                listener = w._listener
                if due is None and w.in_flight == 0 and listener is not None:
                    spy.quiet = listener.connected
                    spy._changed.set()
                    spy._changed = trio.Event()
            return due

        monkeypatch.setattr(Store, "claim", spy_claim)
        monkeypatch.setattr(Store, "next_due", spy_next_due)

    async def wait_quiet(self) -> None:
        with trio.fail_after(10):
            while not self.quiet:
                await self._changed.wait()


async def running(
    nursery: trio.Nursery, client: dt.Durable, monkeypatch: pytest.MonkeyPatch
) -> tuple[dt.Worker, IdleSpy]:
    worker = client.new_worker(NO_POLL)
    spy = IdleSpy(monkeypatch, worker)
    await nursery.start(worker.run)
    return worker, spy


@dt.task("hello")
async def hello(ctx: dt.TaskContext, name: str) -> str:
    return await ctx.step("greet", lambda: f"hello {name}")


@dt.task("waiter")
async def waiter(ctx: dt.TaskContext, event: str) -> Any:
    return await ctx.await_event(event)


async def test_spawn_wakes_an_idle_worker(
    client: dt.Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.register(hello)
    async with trio.open_nursery() as nursery:
        worker, spy = await running(nursery, client, monkeypatch)
        for name in ("a", "b"):
            await spy.wait_quiet()
            spawned = await client.spawn(hello, name)
            with trio.fail_after(10):
                assert await client.wait_result(hello, spawned.task_id) == f"hello {name}"
        worker.shutdown()


async def test_event_wakes_an_idle_worker(
    client: dt.Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.register(waiter)
    async with trio.open_nursery() as nursery:
        worker, spy = await running(nursery, client, monkeypatch)
        await spy.wait_quiet()
        spawned = await client.spawn(waiter, "doorbell")
        with trio.fail_after(10):
            while (await client.get_task(spawned.task_id)).state is not dt.TaskState.SLEEPING:
                await trio.sleep(0.01)
        await spy.wait_quiet()
        assert await client.emit_event("doorbell", "ding") == 1
        with trio.fail_after(10):
            assert await client.wait_result(waiter, spawned.task_id) == "ding"
        worker.shutdown()


@pytest.fixture
async def other_client(pg_url: str, schema: str, client: dt.Durable) -> AsyncIterator[dt.Durable]:
    """A second client on the same schema (a separate process, in effect)."""
    async with dt.Durable.connect(pg_url, queue="default", schema=schema) as c:
        yield c


async def test_child_end_wakes_the_parent_on_an_idle_worker(
    client: dt.Durable, other_client: dt.Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent's worker does not run the child (it lacks its code), so the child's end
    can reach it only through the database's notification."""
    child_started = trio.Event()
    release = trio.Event()

    @dt.task("slow_child")
    async def slow_child(ctx: dt.TaskContext, p: None) -> int:
        async def work() -> int:
            child_started.set()
            await release.wait()
            return 7

        return await ctx.step("work", work)

    @dt.task("joiner")
    async def joiner(ctx: dt.TaskContext, p: None) -> int:
        handle = await ctx.spawn("kid", slow_child, None)
        return int(await ctx.join("kid", handle)) * 6

    client.register(joiner)
    other_client.register(slow_child)
    async with trio.open_nursery() as nursery:
        parent_worker, spy = await running(nursery, client, monkeypatch)
        async with other_client.worker(dt.WorkerOptions(poll_interval=0.05)):
            spawned = await client.spawn(joiner, None)
            with trio.fail_after(10):
                await child_started.wait()
                while (await client.get_task(spawned.task_id)).state is not dt.TaskState.SLEEPING:
                    await trio.sleep(0.01)
            await spy.wait_quiet()
            release.set()
            with trio.fail_after(10):
                assert await client.wait_result(joiner, spawned.task_id) == 42
        parent_worker.shutdown()


async def listen_backends(client: dt.Durable) -> list[int]:
    """The worker's listening connections (not the client's, which wait_result opens to
    hear of ended tasks)."""
    async with client.store.pool.acquire() as conn:
        cur = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%%'"
            " AND query NOT LIKE '%%durable_trio_end%%' AND pid <> pg_backend_pid()"
        )
        return [row["pid"] for row in await cur.fetchall()]


async def test_listener_reconnects_after_its_backend_is_killed(
    client: dt.Durable, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.register(hello)
    async with trio.open_nursery() as nursery:
        worker, spy = await running(nursery, client, monkeypatch)
        await spy.wait_quiet()
        spawned = await client.spawn(hello, "before")
        with trio.fail_after(10):
            assert await client.wait_result(hello, spawned.task_id) == "hello before"

        await spy.wait_quiet()
        (old_pid,) = await listen_backends(client)
        spy.quiet = False  # the next quiet idle wait must come after the reconnect
        async with client.store.pool.acquire() as conn:
            cur = await conn.execute("SELECT pg_terminate_backend(%s) AS ok", (old_pid,))
            assert (await cur.fetchone()) == {"ok": True}
        with trio.fail_after(10):
            while (pids := await listen_backends(client)) in ([], [old_pid]):
                await trio.sleep(0.01)
        assert old_pid not in pids
        assert len(pids) == 1

        await spy.wait_quiet()
        spawned = await client.spawn(hello, "after")
        with trio.fail_after(10):
            assert await client.wait_result(hello, spawned.task_id) == "hello after"
        worker.shutdown()
