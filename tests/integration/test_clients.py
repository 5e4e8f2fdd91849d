"""One behavioural suite for the three clients: trio (`durable_trio.Durable`), blocking
(`durable_trio.sync.Durable`) and asyncio (`durable_trio.aio.Durable`). Each is driven
through an adapter with the same coroutine methods; tasks run on a trio worker, as they
do in production whichever client spawned them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import psycopg
import pytest
import trio

import durable_trio as dt
import durable_trio.aio
import durable_trio.sync
from durable_trio.testing import advance_clock, run_until_idle
from support import fetch

T = TypeVar("T")


@attrs.frozen
class Order:
    item: str
    qty: int


@dt.task("pack")
async def pack(ctx: dt.TaskContext, order: Order) -> str:
    return await ctx.step("box", lambda: f"{order.qty} x {order.item}")


@dt.task("wait-go")
async def wait_go(ctx: dt.TaskContext, params: None) -> Any:
    return await ctx.await_event("go")


@dt.task("never")
async def never(ctx: dt.TaskContext, params: None) -> None:
    raise dt.NonRetryable("no")


class AsyncioLoop:
    """An asyncio loop in a thread of its own, which trio tests hand coroutines to."""

    def __init__(self) -> None:
        # Built directly, not through the policy: trio_asyncio, once imported, replaces
        # the policy with one that refuses to make loops from inside trio.
        self.loop = asyncio.SelectorEventLoop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return await trio.to_thread.run_sync(future.result)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class Adapter:
    """The same calls on every client, as trio coroutines."""

    kind: str
    call: Callable[..., Awaitable[Any]]

    def __init__(self, kind: str, client: Any, call: Callable[..., Awaitable[Any]]) -> None:
        self.kind = kind
        self.client = client
        self.call = call

    def method(self, name: str) -> Callable[..., Awaitable[Any]]:
        return lambda *args, **kwargs: self.call(getattr(self.client, name), *args, **kwargs)


@asynccontextmanager
async def open_client(kind: str, url: str, schema: str) -> AsyncIterator[Adapter]:
    if kind == "trio":
        async with dt.Durable.connect(url, schema=schema) as client:

            async def call_trio(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
                return await fn(*args, **kwargs)

            yield Adapter(kind, client, call_trio)
    elif kind == "sync":
        client = await trio.to_thread.run_sync(
            lambda: durable_trio.sync.Durable.connect(url, schema=schema)
        )
        try:

            async def call_sync(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
                return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))

            yield Adapter(kind, client, call_sync)
        finally:
            await trio.to_thread.run_sync(client.close)
    else:
        loop = AsyncioLoop()
        manager = durable_trio.aio.Durable.connect(url, schema=schema)
        try:
            client = await loop.run(manager.__aenter__())

            async def call_aio(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
                return await loop.run(fn(*args, **kwargs))

            try:
                yield Adapter(kind, client, call_aio)
            finally:
                await loop.run(manager.__aexit__(None, None, None))
        finally:
            loop.close()


KINDS = ["trio", "sync", "aio"]


@pytest.fixture(params=KINDS)
async def any_client(
    request: pytest.FixtureRequest, pg_url: str, client: dt.Durable
) -> AsyncIterator[Adapter]:
    """A client of each kind on the test's schema (`client`, the trio one, runs the
    worker and checks what was written)."""
    client.register(pack, wait_go, never)
    async with open_client(request.param, pg_url, client.schema) as adapter:
        adapter.client.register(pack, wait_go, never)
        yield adapter


async def counts(client: dt.Durable) -> tuple[int, int]:
    [row] = await fetch(
        client, "SELECT (SELECT count(*) FROM @s.tasks) AS t, (SELECT count(*) FROM @s.events) AS e"
    )
    return row["t"], row["e"]


async def test_spawn_by_definition_and_name_then_wait(
    any_client: Adapter, client: dt.Durable
) -> None:
    spawn, by_name, wait = (any_client.method(n) for n in ("spawn", "spawn_by_name", "wait_result"))
    first = await spawn(pack, Order("tea", 2))
    second = await by_name("pack", {"item": "jam", "qty": 1})
    assert first.task_id.version == 7
    assert first.attempt == 1
    await run_until_idle(client)
    assert await wait(pack, first.task_id, timeout=10) == "2 x tea"
    assert await wait("pack", second.task_id, timeout=10) == "1 x jam"
    assert await wait(None, second.task_id, timeout=10) == "1 x jam"


async def test_spawn_many_and_idempotency(any_client: Adapter, client: dt.Durable) -> None:
    many = await any_client.method("spawn_many")(pack, [Order("a", 1), Order("b", 2)])
    assert [r.attempt for r in many] == [1, 1]
    keyed = dt.SpawnOptions(idempotency_key="order-7")
    spawn = any_client.method("spawn")
    first = await spawn(pack, Order("c", 3), options=keyed)
    again = await spawn(pack, Order("c", 3), options=keyed)
    assert (again.task_id, again.created) == (first.task_id, False)
    assert (await counts(client))[0] == 3


async def test_spawn_many_with_a_key_per_task(any_client: Adapter, client: dt.Durable) -> None:
    spawn_many = any_client.method("spawn_many")
    existing = await any_client.method("spawn")(
        pack, Order("old", 1), options=dt.SpawnOptions(idempotency_key="k-old")
    )
    orders = [Order("a", 1), Order("b", 2), Order("c", 3), Order("d", 4), Order("e", 5)]
    keys = ["k-new", None, "k-old", "k-new", None]
    spawned = await spawn_many(pack, orders, idempotency_keys=keys)
    assert [r.created for r in spawned] == [True, True, False, False, True]
    # An existing key returns its task; within one call the first item of a key wins.
    assert (spawned[2].task_id, spawned[2].run_id) == (existing.task_id, existing.run_id)
    assert (spawned[3].task_id, spawned[3].run_id) == (spawned[0].task_id, spawned[0].run_id)
    assert len({r.task_id for r in spawned}) == 4
    assert (await counts(client))[0] == 4  # the old task and three new ones
    rows = await fetch(client, "SELECT idempotency_key, params FROM @s.tasks ORDER BY task_id")
    assert {r["idempotency_key"]: r["params"]["item"] for r in rows if r["idempotency_key"]} == {
        "k-old": "old",
        "k-new": "a",
    }
    again = await spawn_many(pack, orders[:2], idempotency_keys=["k-new", "k-other"])
    assert [r.created for r in again] == [False, True]
    assert again[0].task_id == spawned[0].task_id
    await run_until_idle(client)
    assert await any_client.method("wait_result")(spawned[3], timeout=10) == "1 x a"


async def test_reads_and_steering(any_client: Adapter, client: dt.Durable) -> None:
    spawned = await any_client.method("spawn")(pack, Order("tea", 2))
    failing = await any_client.method("spawn_by_name")("never", None)
    await run_until_idle(client)
    info = await any_client.method("get_task")(spawned.task_id)
    assert (info.state, info.result, [r.attempt for r in info.runs]) == (
        dt.TaskState.COMPLETED,
        "2 x tea",
        [1],
    )
    page = await any_client.method("list_tasks")(state="failed")
    assert [t.task_id for t in page.items] == [failing.task_id]
    steps = await any_client.method("steps")(spawned.task_id)
    assert [(s.name, s.value) for s in steps] == [("box", "2 x tea")]
    stats = await any_client.method("queue_stats")()
    assert stats.failed == 1
    with pytest.raises(dt.TaskFailed):
        await any_client.method("wait_result")("never", failing.task_id, timeout=10)
    retried = await any_client.method("retry")(failing.task_id, max_attempts=3)
    assert retried.attempt == 2
    pending = await any_client.method("spawn")(
        pack, Order("x", 1), options=dt.SpawnOptions(delay=60)
    )
    assert await any_client.method("cancel")(pending.task_id)
    assert not await any_client.method("cancel")(pending.task_id)
    with pytest.raises(dt.TaskCancelled):
        await any_client.method("wait_result")(pack, pending.task_id, timeout=10)
    with pytest.raises(dt.WaitTimeout):
        await any_client.method("wait_result")("never", retried.task_id, timeout=0.05)


async def test_queue_stats_tells_unserved_names(any_client: Adapter, client: dt.Durable) -> None:
    await client.store.register_worker("w1", "h", 1, ["default"], ["pack"], 4, 3600)
    await any_client.method("spawn")(pack, Order("tea", 2))
    await any_client.method("spawn_by_name")("ghost", None)
    await advance_clock(client, 600)
    stats = await any_client.method("queue_stats")(unserved_after=60)
    assert (stats.due_now, stats.unserved_runs) == (2, 1)
    assert [(s.task_name, s.unserved) for s in stats.by_name] == [("ghost", True), ("pack", False)]
    assert stats.oldest_unserved_age is not None
    later = await any_client.method("queue_stats")("default", unserved_after=3600)
    assert (later.unserved_after.total_seconds(), later.unserved_runs) == (3600, 0)


async def test_emit_wakes_a_waiting_task(any_client: Adapter, client: dt.Durable) -> None:
    spawned = await client.spawn(wait_go, None)
    await run_until_idle(client)
    assert await any_client.method("emit_event")("go", {"ok": 1}) == 1
    await run_until_idle(client)
    assert await client.wait_result(wait_go, spawned.task_id, timeout=10) == {"ok": 1}


@asynccontextmanager
async def caller_connection(
    adapter: Adapter, url: str
) -> AsyncIterator[tuple[Any, Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]]:
    """A connection of the adapter's kind in an open transaction, with commit and
    rollback as trio coroutines."""
    if adapter.kind == "trio":
        async with adapter.client.connection() as conn:
            yield conn, conn.commit, conn.rollback
    elif adapter.kind == "sync":
        conn = await trio.to_thread.run_sync(psycopg.connect, url)
        try:
            yield (
                conn,
                lambda: trio.to_thread.run_sync(conn.commit),
                lambda: trio.to_thread.run_sync(conn.rollback),
            )
        finally:
            await trio.to_thread.run_sync(conn.close)
    else:
        conn = await adapter.call(psycopg.AsyncConnection.connect, url)
        try:
            yield conn, lambda: adapter.call(conn.commit), lambda: adapter.call(conn.rollback)
        finally:
            await adapter.call(conn.close)


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_spawn_and_emit_join_the_callers_transaction(
    any_client: Adapter, client: dt.Durable, pg_url: str, outcome: str
) -> None:
    async with caller_connection(any_client, pg_url) as (conn, commit, rollback):
        await any_client.method("spawn")(pack, Order("in-tx", 1), connection=conn)
        await any_client.method("emit_event")("in-tx", 1, connection=conn)
        assert await counts(client) == (0, 0)  # not visible before the caller commits
        await (commit if outcome == "commit" else rollback)()
    assert await counts(client) == ((1, 1) if outcome == "commit" else (0, 0))


BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], type[Exception], str]] = [
    ("spawn", (pack, {"item": "no qty"}), {}, dt.SerializationError, "params of task 'pack'"),
    ("spawn_by_name", ("$nope", None), {}, dt.InvalidInput, "reserved"),
    (
        "spawn_by_name",
        ("pack", None),
        {"options": dt.SpawnOptions(queue=None, priority=1)},
        dt.SerializationError,
        "params",
    ),
    ("spawn", ("pack", None), {}, dt.InvalidInput, "spawn_by_name"),
    (
        "spawn",
        (pack, Order("a", 1)),
        {"connection": object()},
        dt.InvalidInput,
        "connection must be",
    ),
    ("emit_event", ("", None), {}, dt.InvalidInput, "event name"),
    ("emit_event", ("go", {1, 2}), {}, dt.SerializationError, "payload of event 'go'"),
    (
        "spawn_many",
        (pack, [Order("a", 1)]),
        {"options": dt.SpawnOptions(idempotency_key="k")},
        dt.InvalidInput,
        "idempotency_key",
    ),
    (
        "spawn_many",
        (pack, [Order("a", 1), Order("b", 2)]),
        {"idempotency_keys": ["k"]},
        dt.InvalidInput,
        "1 keys for 2 tasks",
    ),
    (
        "spawn_many",
        (pack, [Order("a", 1), Order("b", 2)]),
        {"idempotency_keys": ["k", ""]},
        dt.InvalidInput,
        r"idempotency_keys\[1\] must be a string of 1-500",
    ),
    (
        "spawn_many",
        (pack, [Order("a", 1), "not an order"]),
        {"idempotency_keys": ["k", "l"]},
        dt.SerializationError,
        "params",
    ),
    ("spawn_many", (pack, [Order("a", 1)]), {"idempotency_keys": "k"}, dt.InvalidInput, "list"),
    ("cancel", ("not-a-uuid",), {}, dt.InvalidInput, "task_id must be a UUID"),
    ("get_task", ("01890000-0000-7000-8000-000000000000",), {}, dt.TaskNotFound, "no task"),
    ("list_tasks", (), {"limit": 0}, dt.InvalidInput, "limit"),
    ("retry", ("01890000-0000-7000-8000-000000000000",), {}, dt.TaskNotFound, "no task"),
]


@pytest.mark.parametrize(("method", "args", "kwargs", "error", "message"), BAD_CALLS)
async def test_bad_input_raises_the_same_error_and_writes_nothing(
    any_client: Adapter,
    client: dt.Durable,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        await any_client.method(method)(*args, **kwargs)
    assert await counts(client) == (0, 0)


def test_the_trio_client_names_the_others_under_asyncio(pg_url: str) -> None:
    async def main() -> None:
        async with dt.Durable.connect(pg_url):
            pass  # pragma: no cover

    with pytest.raises(dt.ConfigurationError, match=r"durable_trio\.aio\.Durable under asyncio"):
        asyncio.run(main())


@attrs.frozen
class Receipt:
    total: int


@dt.task("bill")
async def bill(ctx: dt.TaskContext, order: Order) -> Receipt:
    return Receipt(order.qty * 3)


async def test_wait_result_of_what_a_spawn_returned_is_typed(
    any_client: Adapter, client: dt.Durable
) -> None:
    client.register(bill)
    spawned = await any_client.method("spawn")(bill, Order("tea", 2))
    await run_until_idle(client)
    wait = any_client.method("wait_result")
    assert await wait(spawned, timeout=10) == Receipt(6)  # typed, not a dict
    assert await wait(bill, spawned.task_id, timeout=10) == Receipt(6)
    assert await wait(None, spawned.task_id, timeout=10) == {"total": 6}
    with pytest.raises(dt.InvalidInput, match="takes no task_id"):
        await wait(spawned, spawned.task_id, timeout=10)
    with pytest.raises(dt.InvalidInput, match="needs a task_id"):
        await wait(bill, timeout=10)


# -- wait_result is woken by the end notification ----------------------------------------

NEVER_POLLS = 3600.0  # a fallback poll that never comes within a test's fail_after


async def asleep(adapter: Adapter, waiters: int = 1) -> None:
    """Until `waiters` wait_result calls of the adapter's client have read their task and
    wait for its end (one of them reading the notifications)."""
    ends = adapter.client._ends
    while not (ends._pumping and len(list(ends.watchers._by_key)) >= waiters):
        await trio.sleep(0.01)


async def end_task(client: dt.Durable, spawned: dt.SpawnResult[Any], outcome: str) -> None:
    if outcome == "cancelled":
        assert await client.cancel(spawned.task_id)
    else:
        await run_until_idle(client)


@pytest.mark.parametrize("outcome", ["completed", "failed", "cancelled"])
async def test_wait_result_wakes_on_the_end_notification(
    any_client: Adapter, client: dt.Durable, outcome: str
) -> None:
    any_client.client._safety_poll = NEVER_POLLS
    if outcome == "failed":
        spawned = await client.spawn_by_name("never", None)
    else:
        delay = 60 if outcome == "cancelled" else None
        spawned = await client.spawn(pack, Order("tea", 1), options=dt.SpawnOptions(delay=delay))
    seen: list[Any] = []

    async def wait() -> None:
        try:
            seen.append(await any_client.method("wait_result")(None, spawned.task_id))
        except (dt.TaskFailed, dt.TaskCancelled) as ex:
            seen.append(type(ex))

    with trio.fail_after(30):  # only the notification can wake it this soon
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await asleep(any_client)
            await end_task(client, spawned, outcome)
    expected = {"completed": "1 x tea", "failed": dt.TaskFailed, "cancelled": dt.TaskCancelled}
    assert seen == [expected[outcome]]


async def test_waiters_of_one_client_take_turns_reading_the_notifications(
    any_client: Adapter, client: dt.Durable
) -> None:
    any_client.client._safety_poll = NEVER_POLLS
    later = dt.SpawnOptions(delay=60)
    first = await client.spawn(pack, Order("a", 1), options=later)
    second = await client.spawn(pack, Order("b", 1), options=later)
    woken: list[Any] = []

    async def wait(spawned: dt.SpawnResult[Any]) -> None:
        with pytest.raises(dt.TaskCancelled):
            await any_client.method("wait_result")(pack, spawned.task_id)
        woken.append(spawned.task_id)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait, first)
            nursery.start_soon(wait, second)
            await asleep(any_client, waiters=2)
            # Whichever reads the notifications, the other must take over after it.
            await client.cancel(first.task_id)
            while woken != [first.task_id]:
                await trio.sleep(0.01)
            await client.cancel(second.task_id)
    assert woken == [first.task_id, second.task_id]


async def complete_silently(client: dt.Durable, task_id: Any) -> None:
    """End a task the way no worker does: without a notification."""
    await fetch(
        client,
        "UPDATE @s.tasks SET state = 'completed', result = '\"quiet\"' WHERE task_id = %s",
        task_id,
    )


async def test_a_missed_notification_is_found_by_the_safety_poll(
    any_client: Adapter, client: dt.Durable
) -> None:
    any_client.client._safety_poll = 0.2
    spawned = await client.spawn(pack, Order("tea", 1), options=dt.SpawnOptions(delay=60))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(complete_silently, client, spawned.task_id)
            assert await any_client.method("wait_result")(None, spawned.task_id) == "quiet"


async def test_a_lost_listening_connection_makes_waiters_read_again(
    any_client: Adapter, client: dt.Durable
) -> None:
    any_client.client._safety_poll = NEVER_POLLS
    spawned = await client.spawn(pack, Order("tea", 1), options=dt.SpawnOptions(delay=60))
    seen: list[Any] = []

    async def wait() -> None:
        seen.append(await any_client.method("wait_result")(None, spawned.task_id))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await asleep(any_client)
            await complete_silently(client, spawned.task_id)
            pid = any_client.client._ends._conn.pgconn.backend_pid
            await fetch(client, "SELECT pg_terminate_backend(%s)", pid)
    assert seen == ["quiet"]  # read again once listening anew, not at the safety poll


async def _connect_once(kind: str, url: str) -> None:
    if kind == "trio":
        async with dt.Durable.connect(url, timeout=1):
            pass
    elif kind == "sync":
        await trio.to_thread.run_sync(lambda: durable_trio.sync.Durable.connect(url, timeout=1))
    else:
        loop = AsyncioLoop()
        try:
            await loop.run(durable_trio.aio.Durable.connect(url, timeout=1).__aenter__())
        finally:
            loop.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_connect_gives_up_on_a_silent_server_after_its_timeout(kind: str) -> None:
    """A server that takes the connection and never answers: every client's `connect`
    raises DatabaseUnavailable once `timeout` has passed, instead of hanging."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever replies
        port = silent.getsockname()[1]
        url = f"postgresql://nobody@127.0.0.1:{port}/db"
        with trio.fail_after(60), pytest.raises(dt.DatabaseUnavailable, match=r"127\.0\.0\.1"):
            await _connect_once(kind, url)
