"""Bad input, table-driven.

Every case asserts three things: the exact typed error, a message that names what was wrong
and what is accepted, and that nothing was written (row counts of every table in the
client's schema, and the list of schemas, are the same before and after).

Tables:
- CLIENT_CASES: calls on a connected client (spawn, options, events, reads, cancel, ...).
- CONNECT_CASES: `Durable.connect` with hostile queue/schema names and broken URLs.
- TASK_CASES: misuse of `TaskContext` inside a running task: the attempt fails with the
  typed error stored in the task's error, non-retryably, and no checkpoint, wait, event or
  child row is written for the bad call.
- REPLAY_CASES: a stored checkpoint no longer matches the type the (changed) step declares.
Plus the inputs that look hostile but are allowed (quotes in event names, unregistered task
names in spawn_by_name, unknown queues): they are written exactly as given.
"""

from __future__ import annotations

import inspect
import math
import socket
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import durable_trio as dt
from durable_trio.testing import advance_clock, run_until_idle
from support import fetch

TABLES = ("tasks", "runs", "checkpoints", "events", "waits")
MB = 1024 * 1024
PASSWORD = "Hunter2-s3cret-pw"
HOSTILE_QUEUES = {
    "single_quote": "q'x",
    "double_quote": 'q"x',
    "semicolon": "q;x",
    "drop_table": '"; DROP TABLE tasks; --',
    "too_long": "q" * 49,
    "empty": "",
    "uppercase": "Default",
    "leading_digit": "1queue",
}
QUEUE_HELP = ("queue name", "lowercase letters, digits and underscores")


# -- task definitions used by the cases ------------------------------------------------


@attrs.frozen
class Point:
    x: int
    extra: Any = None


@attrs.frozen
class Other:
    y: str


@attrs.frozen
class Reading:
    value: float


@dt.task("typed")
async def typed(ctx: dt.TaskContext, p: Point) -> int:
    return p.x


@dt.task("plain")
async def plain(ctx: dt.TaskContext, p: Any) -> Any:
    return p


@dt.task("reading")
async def reading(ctx: dt.TaskContext, p: Reading) -> float:
    return p.value


# -- helpers -----------------------------------------------------------------------------


@attrs.define
class Env:
    """What a case may use. `existing` is a pending task spawned before counting rows."""

    client: dt.Durable
    pg_url: str
    schema: str
    monkeypatch: pytest.MonkeyPatch
    existing: dt.SpawnResult


async def row_counts(client: dt.Durable) -> dict[str, Any]:
    """Rows in each of the schema's tables, plus every schema name in the database."""
    counts: dict[str, Any] = {}
    async with client.store.pool.acquire() as conn:
        for table in TABLES:
            query = sql.SQL("SELECT count(*) AS n FROM {}.{}").format(
                sql.Identifier(client.schema), sql.Identifier(table)
            )
            row = await (await conn.execute(query)).fetchone()
            assert row is not None
            counts[table] = row["n"]
        cur = await conn.execute(
            "SELECT array_agg(nspname ORDER BY nspname) AS s FROM pg_namespace"
        )
        row = await cur.fetchone()
        assert row is not None
        counts["schemas"] = row["s"]
    return counts


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def open_client(url: str | None = None, **kwargs: Any) -> None:
    async with dt.Durable.connect(url, **kwargs):
        pytest.fail("the connection should have been refused")


def everything_said(ex: BaseException) -> str:
    """The message, repr and full formatted traceback (chained causes included), and the
    message and repr of every exception it still refers to, a suppressed one included
    (``raise ... from None`` keeps it as ``__context__``)."""
    said, seen = [*traceback.format_exception(ex)], set()
    todo: list[BaseException | None] = [ex]
    while todo:
        if (one := todo.pop()) is not None and id(one) not in seen:
            seen.add(id(one))
            said += [str(one), repr(one)]
            todo += [one.__cause__, one.__context__]
    return "\n".join(said)


def check_message(text: str, fragments: tuple[str, ...]) -> None:
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in message {text!r}"


def case(
    id_: str,
    action: Callable[[Env], Any],
    error: type[dt.DurableError],
    *fragments: str,
    secret: str | None = None,
) -> Any:
    return pytest.param(action, error, fragments, secret, id=id_)


def with_options(**kwargs: Any) -> Callable[[Env], Awaitable[Any]]:
    """Spawn a valid task with SpawnOptions(**kwargs) (the constructor is expected to raise)."""
    return lambda env: env.client.spawn(plain, {}, options=dt.SpawnOptions(**kwargs))


# -- client-side cases ---------------------------------------------------------------------


async def _advance_clock_twice(env: Env) -> None:
    """Each step is within the bound, their sum is not: the clock's offset is bounded."""
    await advance_clock(env.client, dt.MAX_DURATION)
    await advance_clock(env.client, 1)


def _register_forced_nul_name(env: Env) -> None:
    """A definition whose name was changed around its validation (attrs' frozen classes
    can be): registering it must still refuse the name, not crash the worker's claims."""
    definition = dt.TaskDefinition(name="forced", fn=plain.fn)
    object.__setattr__(definition, "name", "forced\x00")
    env.client.register(definition)


def _wrong_url_conninfo(env: Env) -> str:
    return make_conninfo(env.pg_url, user="no_such_role_x", password=PASSWORD, connect_timeout=5)


CLIENT_CASES = [
    # Params that cannot become JSON (nothing is written, the error says what and where).
    case(
        "params-object",
        lambda env: env.client.spawn(plain, object()),
        dt.SerializationError,
        "params of task 'plain'",
        "object",
        "not JSON-serialisable",
    ),
    case(
        "params-set-inside-any",
        lambda env: env.client.spawn(typed, Point(1, extra={1, 2})),
        dt.SerializationError,
        "params of task 'typed'",
        "set",
    ),
    case(
        "params-set-top-level-any",
        lambda env: env.client.spawn(plain, {"tags": frozenset({"a"})}),
        dt.SerializationError,
        "frozenset",
    ),
    case(
        "params-naive-datetime",
        lambda env: env.client.spawn(plain, {"at": datetime(2030, 1, 1, 12)}),
        dt.SerializationError,
        "params of task 'plain'",
        "naive datetime",
        "tzinfo=UTC",
    ),
    case(
        "params-int-dict-key",
        lambda env: env.client.spawn_by_name("plain", {"n": {1: "x"}}),
        dt.SerializationError,
        "params of task 'plain'",
        "dict key 1 (int)",
    ),
    case(
        "spawn-connection-not-a-connection",
        lambda env: env.client.spawn(plain, {}, connection=object()),
        dt.InvalidInput,
        "connection must be a connection from Durable.connection()",
        "object",
    ),
    case(
        "emit-connection-not-a-connection",
        lambda env: env.client.emit_event("e", 1, connection="postgresql://x"),
        dt.InvalidInput,
        "connection must be",
        "str",
    ),
    case(
        "params-lambda",
        lambda env: env.client.spawn(plain, {"callback": lambda: 1}),
        dt.SerializationError,
        "params of task 'plain'",
        "function",
    ),
    case(
        "params-wrong-attrs-class",
        lambda env: env.client.spawn(typed, Other("a")),
        dt.SerializationError,
        "Point",
        "Other",
    ),
    case(
        "params-dict-instead-of-attrs",
        lambda env: env.client.spawn(typed, {"x": 1}),
        dt.SerializationError,
        "Point",
        "dict",
    ),
    case(
        "params-wrong-field-type",
        lambda env: env.client.spawn(typed, Point("not a number")),  # type: ignore[arg-type]
        dt.SerializationError,
        "params of task 'typed'",
        "int",
        "attribute x",
    ),
    case(
        "params-oversized",
        lambda env: env.client.spawn(plain, "x" * (10 * MB + 1)),
        dt.SerializationError,
        "the limit is 10485760 bytes",
    ),
    case(
        "params-oversized-in-bytes-not-characters",
        lambda env: env.client.spawn(plain, "\N{GRINNING FACE}" * (3 * MB)),
        dt.SerializationError,
        "the limit is 10485760 bytes",
    ),
    case(
        "params-nan",
        lambda env: env.client.spawn(plain, {"v": math.nan}),
        dt.SerializationError,
        "NaN",
    ),
    case(
        "params-infinity-typed-float",
        lambda env: env.client.spawn(reading, Reading(math.inf)),
        dt.SerializationError,
        "params of task 'reading'",
        "Infinity",
    ),
    case(
        "params-nul-in-string",
        lambda env: env.client.spawn(plain, {"name": "a\x00b"}),
        dt.SerializationError,
        "NUL",
    ),
    case(
        "params-lone-surrogate",
        lambda env: env.client.spawn(plain, ["ok", "\ud800"]),
        dt.SerializationError,
        "params of task 'plain'",
        "surrogate",
    ),
    case(
        "params-nul-in-key",
        lambda env: env.client.spawn(plain, {"a\x00": 1}),
        dt.SerializationError,
        "NUL",
    ),
    case(
        "spawn-by-name-registered-params-mismatch",
        lambda env: env.client.spawn_by_name("typed", {"x": "seven"}),
        dt.SerializationError,
        "params of task 'typed'",
        "int",
    ),
    case(
        "spawn-many-one-bad-writes-none",
        lambda env: env.client.spawn_many(typed, [Point(1), Point(2), Point("three")]),  # type: ignore[arg-type]
        dt.SerializationError,
        "params of task 'typed'",
    ),
    case(
        "spawn-with-name-string",
        lambda env: env.client.spawn("plain", {}),  # type: ignore[arg-type]
        dt.InvalidInput,
        "spawn_by_name",
    ),
    case(
        "spawn-options-not-spawnoptions",
        lambda env: env.client.spawn(plain, {}, options={"priority": 1}),  # type: ignore[arg-type]
        dt.InvalidInput,
        "options must be a SpawnOptions",
    ),
    case(
        "headers-nan",
        with_options(headers={"score": math.nan}),
        dt.SerializationError,
        "headers",
        "NaN",
    ),
    case(
        "headers-non-string-key",
        with_options(headers={1: "a"}),
        dt.InvalidInput,
        "headers must be a mapping with string keys",
    ),
    # Durations.
    case("delay-negative", with_options(delay=-1), dt.InvalidInput, "delay", "zero or more"),
    case("delay-nan", with_options(delay=math.nan), dt.InvalidInput, "delay", "finite"),
    case("delay-infinite", with_options(delay=math.inf), dt.InvalidInput, "delay", "finite"),
    case(
        "delay-not-a-duration",
        with_options(delay="5 minutes"),
        dt.InvalidInput,
        "delay must be a timedelta or a number of seconds",
    ),
    # One bound for every duration (MAX_DURATION, 36525 days): over it, nothing is written.
    case("delay-1e13", with_options(delay=1e13), dt.InvalidInput, "delay must be at most"),
    case(
        "delay-timedelta-max",
        with_options(delay=timedelta.max),
        dt.InvalidInput,
        "delay must be at most 36525 days",
    ),
    case(
        "start-at-beyond-the-bound",
        with_options(start_at=datetime.now(UTC) + dt.MAX_DURATION + timedelta(days=2)),
        dt.InvalidInput,
        "start_at must be at most 36525 days",
    ),
    case(
        "start-at-datetime-max",
        with_options(start_at=datetime.max.replace(tzinfo=UTC)),
        dt.InvalidInput,
        "start_at must be at most 36525 days",
    ),
    case(
        "retry-fixed-1e13",
        lambda env: env.client.spawn(
            plain, {}, options=dt.SpawnOptions(retry=dt.RetryStrategy.fixed(1e13))
        ),
        dt.InvalidInput,
        "retry delay must be at most 36525 days",
    ),
    case(
        "retry-max-delay-timedelta-max",
        lambda env: dt.RetryStrategy.exponential(1, max_delay=timedelta.max),
        dt.InvalidInput,
        "retry max_delay must be at most 36525 days",
    ),
    case(
        "cancellation-max-duration-timedelta-max",
        lambda env: env.client.spawn(
            plain,
            {},
            options=dt.SpawnOptions(cancellation=dt.CancellationPolicy(max_duration=timedelta.max)),
        ),
        dt.InvalidInput,
        "max_duration must be at most 36525 days",
    ),
    case(
        "cancellation-max-pending-delay-1e13",
        lambda env: dt.CancellationPolicy(max_pending_delay=1e13),
        dt.InvalidInput,
        "max_pending_delay must be at most 36525 days",
    ),
    case(
        "worker-claim-timeout-1e13",
        lambda env: env.client.new_worker(dt.WorkerOptions(claim_timeout=1e13)),
        dt.InvalidInput,
        "claim_timeout must be at most 36525 days",
    ),
    case(
        "worker-poll-interval-1e13",
        lambda env: dt.WorkerOptions(poll_interval=1e13),
        dt.InvalidInput,
        "poll_interval must be at most 36525 days",
    ),
    case(
        "worker-shutdown-grace-timedelta-max",
        lambda env: dt.WorkerOptions(shutdown_grace=timedelta.max),
        dt.InvalidInput,
        "shutdown_grace must be at most 36525 days",
    ),
    case(
        "wait-result-timeout-1e13",
        lambda env: env.client.wait_result(plain, env.existing.task_id, timeout=1e13),
        dt.InvalidInput,
        "timeout must be at most 36525 days",
    ),
    case(
        "advance-clock-beyond-the-bound",
        lambda env: advance_clock(env.client, 1e13),
        dt.InvalidInput,
        "advance_clock by must be at most 36525 days",
    ),
    case(
        "advance-clock-offset-beyond-the-bound",
        _advance_clock_twice,
        dt.InvalidInput,
        "more than 36525 days (MAX_DURATION) ahead",
    ),
    case(
        "cancellation-max-duration-nan",
        lambda env: env.client.spawn(
            plain,
            {},
            options=dt.SpawnOptions(cancellation=dt.CancellationPolicy(max_duration=math.nan)),
        ),
        dt.InvalidInput,
        "max_duration",
        "finite",
    ),
    case(
        "cancellation-max-pending-delay-zero",
        lambda env: dt.CancellationPolicy(max_pending_delay=0),
        dt.InvalidInput,
        "max_pending_delay",
        "more than zero",
    ),
    case(
        "worker-poll-interval-zero",
        lambda env: env.client.new_worker(dt.WorkerOptions(poll_interval=0)),
        dt.InvalidInput,
        "poll_interval",
        "more than zero",
    ),
    case(
        "worker-concurrency-zero",
        lambda env: dt.WorkerOptions(concurrency=0),
        dt.InvalidInput,
        "concurrency must be an integer from 1 to 10000",
    ),
    case(
        "worker-id-control-chars",
        lambda env: dt.WorkerOptions(worker_id="host\x00:1"),
        dt.InvalidInput,
        "worker_id",
    ),
    # Retry strategies.
    case(
        "retry-factor-below-one",
        lambda env: dt.RetryStrategy.exponential(1.0, factor=0.5),
        dt.InvalidInput,
        "retry factor must be between 1 and 100",
    ),
    case(
        "retry-jitter-above-one",
        lambda env: dt.RetryStrategy.exponential(1.0, jitter=2),
        dt.InvalidInput,
        "retry jitter must be between 0 and 1",
    ),
    case(
        "retry-base-negative",
        lambda env: dt.RetryStrategy.exponential(-1),
        dt.InvalidInput,
        "retry base delay",
        "zero or more",
    ),
    case(
        "retry-fixed-nan",
        lambda env: dt.RetryStrategy.fixed(math.nan),
        dt.InvalidInput,
        "retry delay",
        "finite",
    ),
    case(
        "retry-unknown-kind",
        lambda env: dt.RetryStrategy("linear"),  # type: ignore[arg-type]
        dt.InvalidInput,
        "'linear'",
        "none, fixed, exponential",
    ),
    case(
        "retry-not-a-strategy",
        with_options(retry="exponential"),
        dt.InvalidInput,
        "retry must be a RetryStrategy",
    ),
    # Other spawn options.
    case("max-attempts-zero", with_options(max_attempts=0), dt.InvalidInput, "max_attempts"),
    case("max-attempts-true", with_options(max_attempts=True), dt.InvalidInput, "got True"),
    case("max-attempts-float", with_options(max_attempts=1.5), dt.InvalidInput, "got 1.5"),
    case(
        "priority-huge",
        with_options(priority=10**12),
        dt.InvalidInput,
        "priority must be an integer within +-1000000",
    ),
    case(
        "start-at-naive",
        with_options(start_at=datetime(2030, 1, 1, 12, 0)),
        dt.InvalidInput,
        "start_at must be a timezone-aware datetime",
    ),
    case(
        "start-at-and-delay",
        with_options(start_at=datetime(2030, 1, 1, tzinfo=UTC), delay=5),
        dt.InvalidInput,
        "either delay or start_at",
    ),
    case(
        "idempotency-key-empty",
        with_options(idempotency_key=""),
        dt.InvalidInput,
        "idempotency_key must be a string of 1-500 characters",
    ),
    case(
        "idempotency-key-nul",
        with_options(idempotency_key="key\x00"),
        dt.InvalidInput,
        "idempotency_key",
        "NUL",
    ),
    # Header names follow the rules of every other name.
    case(
        "header-name-nul",
        with_options(headers={"trace\x00id": 1}),
        dt.InvalidInput,
        "header name",
        "control characters",
    ),
    case(
        "header-name-too-long",
        with_options(headers={"h" * 201: 1}),
        dt.InvalidInput,
        "header name must be 1 to 200 characters long, got 201",
    ),
    case(
        "header-name-reserved",
        with_options(headers={"$trace": 1}),
        dt.InvalidInput,
        "header name '$trace'",
        "reserved",
    ),
    # Task names, however the definition is made.
    case(
        "task-definition-nul-name",
        lambda env: dt.TaskDefinition(name="a\x00b", fn=plain.fn),
        dt.InvalidInput,
        "task name",
        "control characters",
    ),
    case(
        "task-definition-empty-name",
        lambda env: dt.TaskDefinition(name="", fn=plain.fn),
        dt.InvalidInput,
        "task name must be 1 to 200 characters long, got 0",
    ),
    case(
        "task-definition-reserved-name",
        lambda env: dt.TaskDefinition(name="$reserved", fn=plain.fn),
        dt.InvalidInput,
        "task name '$reserved'",
        "reserved",
    ),
    case(
        "task-definition-300-characters",
        lambda env: dt.TaskDefinition(name="t" * 300, fn=plain.fn),
        dt.InvalidInput,
        "task name must be 1 to 200 characters long, got 300",
    ),
    case(
        "task-decorator-empty-name",
        lambda env: dt.task("")(plain.fn),
        dt.InvalidInput,
        "task name must be 1 to 200 characters long, got 0",
    ),
    case(
        "register-a-definition-whose-name-was-forced",
        _register_forced_nul_name,
        dt.InvalidInput,
        "task name",
        "control characters",
    ),
    case(
        "spawn-by-name-nul",
        lambda env: env.client.spawn_by_name("a\x00b", {}),
        dt.InvalidInput,
        "task name",
        "control characters",
    ),
    # bytes under Any would come back as base85 text: refused (declared bytes are fine).
    case(
        "params-bytes-under-any",
        lambda env: env.client.spawn(plain, {"blob": b"\x00\x01"}),
        dt.SerializationError,
        "params of task 'plain'",
        "bytes",
        "base85",
    ),
    case(
        "event-payload-bytes",
        lambda env: env.client.emit_event("ready", b"raw"),
        dt.SerializationError,
        "payload of event 'ready'",
        "bytes",
    ),
    # Hostile task names for spawn_by_name.
    case(
        "task-name-empty",
        lambda env: env.client.spawn_by_name("", {}),
        dt.InvalidInput,
        "task name must be 1 to 200 characters long, got 0",
    ),
    case(
        "task-name-too-long",
        lambda env: env.client.spawn_by_name("t" * 201, {}),
        dt.InvalidInput,
        "task name must be 1 to 200 characters long, got 201",
    ),
    case(
        "task-name-reserved",
        lambda env: env.client.spawn_by_name("$task:x", {}),
        dt.InvalidInput,
        "reserved",
    ),
    case(
        "task-name-control-chars",
        lambda env: env.client.spawn_by_name("bad\nname", {}),
        dt.InvalidInput,
        "control characters",
    ),
    # Hostile event names and payloads.
    case(
        "event-name-empty",
        lambda env: env.client.emit_event("", 1),
        dt.InvalidInput,
        "event name must be 1 to 200 characters long, got 0",
    ),
    case(
        "event-name-too-long",
        lambda env: env.client.emit_event("e" * 201, 1),
        dt.InvalidInput,
        "event name must be 1 to 200 characters long, got 201",
    ),
    case(
        "event-name-control-chars",
        lambda env: env.client.emit_event("ready\r\n", 1),
        dt.InvalidInput,
        "event name",
        "control characters",
    ),
    case(
        "event-name-nul",
        lambda env: env.client.emit_event("ready\x00", 1),
        dt.InvalidInput,
        "control characters",
    ),
    case(
        "event-name-reserved",
        lambda env: env.client.emit_event(f"$task:{env.existing.task_id}", {"state": "completed"}),
        dt.InvalidInput,
        "reserved",
    ),
    case(
        "event-name-not-a-string",
        lambda env: env.client.emit_event(42, 1),  # type: ignore[arg-type]
        dt.InvalidInput,
        "event name must be a string, got int",
    ),
    case(
        "event-payload-infinity",
        lambda env: env.client.emit_event("ready", [1.0, -math.inf]),
        dt.SerializationError,
        "payload of event 'ready'",
        "Infinity",
    ),
    case(
        "event-payload-set",
        lambda env: env.client.emit_event("ready", {"ids": {1, 2}}),
        dt.SerializationError,
        "payload of event 'ready'",
        "set",
    ),
    # Reading, waiting and cancelling.
    case(
        "definition-unknown",
        lambda env: env.client.definition("x"),
        dt.UnknownTask,
        "no task named 'x' is registered",
    ),
    case(
        "register-not-a-task",
        lambda env: env.client.register(plain.fn),  # type: ignore[arg-type]
        dt.ConfigurationError,
        "expected a @durable_trio.task function",
    ),
    case(
        "get-task-random-uuid",
        lambda env: env.client.get_task(uuid.UUID("00000000-0000-7000-8000-000000000001")),
        dt.TaskNotFound,
        "no task with id 00000000-0000-7000-8000-000000000001",
    ),
    case(
        "get-task-not-a-uuid",
        lambda env: env.client.get_task("1; DROP TABLE tasks"),  # type: ignore[arg-type]
        dt.InvalidInput,
        "task_id must be a UUID",
    ),
    case(
        "cancel-random-uuid",
        lambda env: env.client.cancel(uuid.UUID(int=7)),
        dt.TaskNotFound,
        "no task with id",
    ),
    case(
        "cancel-not-a-uuid",
        lambda env: env.client.cancel(12345),  # type: ignore[arg-type]
        dt.InvalidInput,
        "task_id must be a UUID, got 12345",
    ),
    case(
        "cancel-reason-nul",
        lambda env: env.client.cancel(env.existing.task_id, reason="stop\x00now"),
        dt.InvalidInput,
        "reason",
        "NUL",
    ),
    case(
        "wait-result-random-uuid",
        lambda env: env.client.wait_result(plain, uuid.uuid4(), timeout=1),
        dt.TaskNotFound,
        "no task with id",
    ),
    case(
        "wait-result-not-a-uuid",
        lambda env: env.client.wait_result(plain, "abc", timeout=1),  # type: ignore[arg-type]
        dt.InvalidInput,
        "task_id must be a UUID, got 'abc'",
    ),
    case(
        "wait-result-unknown-name",
        lambda env: env.client.wait_result("no-such-task", env.existing.task_id, timeout=1),
        dt.UnknownTask,
        "no task named 'no-such-task' is registered",
        "None",
    ),
    case(
        "wait-result-other-task",
        lambda env: env.client.wait_result(typed, env.existing.task_id, timeout=1),
        dt.InvalidInput,
        "'plain'",
        "'typed'",
    ),
    case(
        "wait-result-negative-timeout",
        lambda env: env.client.wait_result(plain, env.existing.task_id, timeout=-1),
        dt.InvalidInput,
        "timeout",
        "zero or more",
    ),
    case(
        "wait-result-nan-timeout",
        lambda env: env.client.wait_result(plain, env.existing.task_id, timeout=math.nan),
        dt.InvalidInput,
        "timeout",
        "finite",
    ),
    # Hostile queue names at every entry point.
    *[
        case(
            f"queue-{label}-spawn-options",
            with_options(queue=name),
            dt.InvalidInput,
            *QUEUE_HELP,
        )
        for label, name in HOSTILE_QUEUES.items()
    ],
    *[
        case(
            f"queue-{label}-emit-event",
            lambda env, name=name: env.client.emit_event("ready", 1, queue=name),
            dt.InvalidInput,
            *QUEUE_HELP,
        )
        for label, name in HOSTILE_QUEUES.items()
    ],
    case(
        "worker-options-no-queues",
        lambda env: dt.WorkerOptions(queues=[]),
        dt.InvalidInput,
        "queues must name at least one queue",
    ),
    case(
        "worker-options-repeated-queue",
        lambda env: dt.WorkerOptions(queues=["a", "b", "a"]),
        dt.InvalidInput,
        "queues lists 'a' more than once",
    ),
    *[
        case(
            f"queue-{label}-worker-options",
            lambda env, name=name: env.client.new_worker(dt.WorkerOptions(queues=[name])),
            dt.InvalidInput,
            *QUEUE_HELP,
        )
        for label, name in HOSTILE_QUEUES.items()
    ],
    *[
        case(
            f"queue-{label}-connect",
            lambda env, name=name: open_client(env.pg_url, queue=name, schema=env.schema),
            dt.InvalidInput,
            *QUEUE_HELP,
        )
        for label, name in HOSTILE_QUEUES.items()
    ],
    # Durable.connect: schemas, pool size, URLs, credentials.
    case(
        "schema-injection",
        lambda env: open_client(env.pg_url, schema='x"; drop schema public cascade; --'),
        dt.InvalidInput,
        "schema name",
        "lowercase letters, digits and underscores",
    ),
    case(
        "schema-uppercase",
        lambda env: open_client(env.pg_url, schema="Durable"),
        dt.InvalidInput,
        "schema name 'Durable' is invalid",
    ),
    case(
        "schema-empty",
        lambda env: open_client(env.pg_url, schema=""),
        dt.InvalidInput,
        "schema name '' is invalid",
    ),
    case(
        "schema-pg-prefix",
        lambda env: open_client(env.pg_url, schema="pg_durable"),
        dt.InvalidInput,
        "schema name 'pg_durable'",
        "reserves the prefix 'pg_'",
    ),
    case(
        "pool-size-zero",
        lambda env: open_client(env.pg_url, schema=env.schema, pool_size=0),
        dt.InvalidInput,
        "pool_size must be a positive integer, got 0",
    ),
    case(
        "url-not-a-url",
        lambda env: open_client("not a url"),
        dt.DatabaseUnavailable,
        "invalid database URL",
        "not a url",
    ),
    case(
        "url-port-not-a-number",
        lambda env: open_client("postgresql://localhost:notaport/db"),
        dt.DatabaseUnavailable,
        "notaport",
    ),
    case(
        "url-port-not-a-number-with-password",
        lambda env: open_client(f"postgresql://app:{PASSWORD}@localhost:notaport/db"),
        dt.DatabaseUnavailable,
        "notaport",
        "app:***@",
        secret=PASSWORD,
    ),
    case(
        "url-unparseable-with-password",
        lambda env: open_client(f"postgresql://app:{PASSWORD}@[::1/db"),
        dt.DatabaseUnavailable,
        "invalid database URL",
        secret=PASSWORD,
    ),
    case(
        "server-unreachable-password-redacted",
        lambda env: open_client(
            f"postgresql://app:{PASSWORD}@127.0.0.1:{closed_port()}/db?connect_timeout=5"
        ),
        dt.DatabaseUnavailable,
        "cannot connect to postgresql://app:***@127.0.0.1:",
        secret=PASSWORD,
    ),
    case(
        "wrong-credentials-password-redacted",
        lambda env: open_client(_wrong_url_conninfo(env), schema=env.schema),
        dt.DatabaseUnavailable,
        "cannot connect to",
        "no_such_role_x",
        "password=***",
        secret=PASSWORD,
    ),
    case(
        "url-missing-env-unset",
        lambda env: (
            env.monkeypatch.delenv("DURABLE_DATABASE_URL", raising=False),
            open_client(schema=env.schema),
        )[1],
        dt.ConfigurationError,
        "no database URL",
        "DURABLE_DATABASE_URL",
    ),
]


@pytest.fixture
async def env(client: dt.Durable, pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch) -> Env:
    client.register(typed, plain, reading)
    existing = await client.spawn(plain, {"kept": True})
    return Env(client, pg_url, schema, monkeypatch, existing)


async def _call(action: Callable[[Env], Any], env: Env) -> None:
    """Run a case's action, sync (option constructors) or async (client calls)."""
    outcome = action(env)
    if inspect.isawaitable(outcome):
        await outcome


@pytest.mark.parametrize(("action", "error", "fragments", "secret"), CLIENT_CASES)
async def test_rejected_without_writing(
    env: Env,
    action: Callable[[Env], Any],
    error: type[dt.DurableError],
    fragments: tuple[str, ...],
    secret: str | None,
) -> None:
    before = await row_counts(env.client)
    with pytest.raises(dt.DurableError) as info:
        await _call(action, env)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    check_message(str(info.value), fragments)
    if secret is not None:
        assert secret not in everything_said(info.value)
    assert await row_counts(env.client) == before
    assert (await env.client.get_task(env.existing.task_id)).state is dt.TaskState.PENDING


# -- misuse inside a running task ----------------------------------------------------------

Misuse = Callable[[dt.TaskContext], Awaitable[Any]]


def _noop() -> None:
    return None


async def _join_a_uuid(ctx: dt.TaskContext) -> Any:
    return await ctx.join("child", ctx.task_id)  # type: ignore[arg-type]


async def _spawn_bad_queue(ctx: dt.TaskContext) -> Any:
    return await ctx.spawn("child", plain, {}, dt.SpawnOptions(queue='x"; DROP TABLE runs'))


TASK_CASES = [
    pytest.param(
        lambda ctx: ctx.sleep_for("nap", -1),
        dt.InvalidInput,
        ("duration", "zero or more"),
        id="sleep-for-negative",
    ),
    pytest.param(
        lambda ctx: ctx.sleep_for("nap", math.nan),
        dt.InvalidInput,
        ("duration", "finite"),
        id="sleep-for-nan",
    ),
    pytest.param(
        lambda ctx: ctx.sleep_for("nap", timedelta(days=-1)),
        dt.InvalidInput,
        ("duration", "zero or more"),
        id="sleep-for-negative-timedelta",
    ),
    pytest.param(
        lambda ctx: ctx.sleep_until("nap", datetime(2030, 1, 1)),
        dt.InvalidInput,
        ("timezone-aware",),
        id="sleep-until-naive",
    ),
    pytest.param(
        lambda ctx: ctx.step("", _noop),
        dt.InvalidInput,
        ("step name must be 1 to 200 characters long, got 0",),
        id="step-name-empty",
    ),
    pytest.param(
        lambda ctx: ctx.step("s" * 201, _noop),
        dt.InvalidInput,
        ("step name must be 1 to 200 characters long, got 201",),
        id="step-name-too-long",
    ),
    pytest.param(
        lambda ctx: ctx.step("fetch\tall", _noop),
        dt.InvalidInput,
        ("step name", "control characters"),
        id="step-name-control-chars",
    ),
    pytest.param(
        lambda ctx: ctx.step("$spawn:child", _noop),
        dt.InvalidInput,
        ("step name", "reserved"),
        id="step-name-reserved",
    ),
    pytest.param(
        lambda ctx: ctx.step("make", object),
        dt.SerializationError,
        ("step 'make'", "object"),
        id="step-result-unserialisable",
    ),
    pytest.param(
        lambda ctx: ctx.step("measure", lambda: {"v": math.nan}),
        dt.SerializationError,
        ("step 'measure'", "NaN"),
        id="step-result-nan",
    ),
    pytest.param(
        lambda ctx: ctx.step("name", lambda: "a\x00b"),
        dt.SerializationError,
        ("step 'name'", "NUL"),
        id="step-result-nul",
    ),
    pytest.param(
        lambda ctx: ctx.await_event(""),
        dt.InvalidInput,
        ("event name must be 1 to 200 characters long",),
        id="await-event-name-empty",
    ),
    pytest.param(
        lambda ctx: ctx.await_event("$task:123"),
        dt.InvalidInput,
        ("event name", "reserved"),
        id="await-event-name-reserved",
    ),
    pytest.param(
        lambda ctx: ctx.await_event("ready", timeout=-5),
        dt.InvalidInput,
        ("timeout", "zero or more"),
        id="await-event-timeout-negative",
    ),
    pytest.param(
        lambda ctx: ctx.emit_event("e" * 201),
        dt.InvalidInput,
        ("event name must be 1 to 200 characters long, got 201",),
        id="emit-event-name-too-long",
    ),
    pytest.param(
        lambda ctx: ctx.emit_event("ready", {"v": math.inf}),
        dt.SerializationError,
        ("payload of event 'ready'", "Infinity"),
        id="emit-event-payload-infinity",
    ),
    pytest.param(
        _join_a_uuid,
        dt.InvalidInput,
        ("join needs a TaskHandle",),
        id="join-not-a-handle",
    ),
    pytest.param(
        lambda ctx: ctx.spawn("child", plain, object()),
        dt.SerializationError,
        ("params of task 'plain'",),
        id="spawn-child-unserialisable-params",
    ),
    pytest.param(
        _spawn_bad_queue,
        dt.InvalidInput,
        QUEUE_HELP,
        id="spawn-child-hostile-queue",
    ),
    pytest.param(
        lambda ctx: ctx.sleep_for("nap", 1e13),
        dt.InvalidInput,
        ("duration must be at most 36525 days",),
        id="sleep-for-1e13",
    ),
    pytest.param(
        lambda ctx: ctx.sleep_for("nap", timedelta.max),
        dt.InvalidInput,
        ("duration must be at most 36525 days",),
        id="sleep-for-timedelta-max",
    ),
    pytest.param(
        lambda ctx: ctx.sleep_until("nap", datetime.max.replace(tzinfo=UTC)),
        dt.InvalidInput,
        ("sleep_until's time must be at most 36525 days",),
        id="sleep-until-datetime-max",
    ),
    pytest.param(
        lambda ctx: ctx.await_event("ready", timeout=1e13),
        dt.InvalidInput,
        ("timeout must be at most 36525 days",),
        id="await-event-timeout-1e13",
    ),
    pytest.param(
        lambda ctx: ctx.heartbeat(extend_by=1e13),
        dt.InvalidInput,
        ("extend_by must be at most 36525 days",),
        id="heartbeat-extend-by-1e13",
    ),
    pytest.param(
        lambda ctx: ctx.step("blob", lambda: b"raw"),
        dt.SerializationError,
        ("step 'blob'", "bytes", "base85"),
        id="step-result-bytes-under-any",
    ),
    pytest.param(
        lambda ctx: ctx.heartbeat(extend_by=-1),
        dt.InvalidInput,
        ("extend_by", "more than zero"),
        id="heartbeat-negative",
    ),
]
MISUSES: dict[str, Misuse] = {p.id: p.values[0] for p in TASK_CASES}  # type: ignore[misc]


@dt.task("misuse")
async def misuse(ctx: dt.TaskContext, case_id: str) -> str:
    await MISUSES[case_id](ctx)
    return "the misuse was accepted"


@pytest.mark.parametrize(("op", "error", "fragments"), TASK_CASES)
async def test_misuse_in_a_task_fails_the_attempt_without_writing(
    client: dt.Durable,
    request: pytest.FixtureRequest,
    op: Misuse,
    error: type[dt.DurableError],
    fragments: tuple[str, ...],
) -> None:
    client.register(misuse, plain)
    case_id = request.node.callspec.id
    spawned = await client.spawn(misuse, case_id)
    before = await row_counts(client)
    await run_until_idle(client)
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.FAILED, info
    assert info.attempts == 1, "deterministic misuse must not be retried"
    assert info.error is not None
    assert info.error["type"] == f"durable_trio._errors.{error.__name__}"
    assert info.error["retryable"] is False
    check_message(info.error["message"], fragments)
    after = await row_counts(client)
    assert after == before, "the rejected call wrote something"


# -- a stored checkpoint no longer matches the declared step type ---------------------------


@attrs.frozen
class Shape:
    a: int


@attrs.frozen
class WiderShape:
    a: int
    b: int


REPLAY_CASES = [
    pytest.param("hello", int, ("step 's'", "'hello'", "int"), id="str-stored-int-declared"),
    pytest.param("42", int, ("step 's'", "'42'", "int"), id="numeric-str-stored-int-declared"),
    pytest.param(1.5, int, ("step 's'", "1.5", "int"), id="float-stored-int-declared"),
    pytest.param(7, str, ("step 's'", "7", "str"), id="int-stored-str-declared"),
    pytest.param(1, bool, ("step 's'", "bool"), id="int-stored-bool-declared"),
    pytest.param({"a": 1}, WiderShape, ("step 's'", "WiderShape", "b"), id="field-added"),
    pytest.param({"a": 1, "b": 2}, Shape, ("step 's'", "Shape", "b"), id="field-removed"),
]
REPLAY_TYPES = {p.id: p.values[1] for p in REPLAY_CASES}


@attrs.frozen
class Evolve:
    case_id: str
    stored: Any


@dt.task("evolving")
async def evolving_v1(ctx: dt.TaskContext, p: Evolve) -> str:
    await ctx.step("s", lambda: p.stored, result_type=Any)
    await ctx.sleep_for("nap", 60)
    return "v1"


@dt.task("evolving")
async def evolving_v2(ctx: dt.TaskContext, p: Evolve) -> str:
    def never() -> Any:
        raise AssertionError("a checkpointed step ran again")

    value = await ctx.step("s", never, result_type=REPLAY_TYPES[p.case_id])
    return f"v2 accepted {value!r}"


@pytest.fixture
async def second_client(pg_url: str, schema: str, client: dt.Durable) -> AsyncIterator[dt.Durable]:
    """Another process's view of the same schema: the 'new deploy' with changed code."""
    async with dt.Durable.connect(pg_url, queue="default", schema=schema, migrate=False) as c:
        yield c


@pytest.mark.parametrize(("stored", "declared", "fragments"), REPLAY_CASES)
async def test_replay_with_changed_step_type_fails_non_retryably(
    client: dt.Durable,
    second_client: dt.Durable,
    request: pytest.FixtureRequest,
    stored: Any,
    declared: Any,
    fragments: tuple[str, ...],
) -> None:
    client.register(evolving_v1)
    spawned = await client.spawn(evolving_v1, Evolve(request.node.callspec.id, stored))
    await run_until_idle(client)
    assert (await client.get_task(spawned.task_id)).state is dt.TaskState.SLEEPING
    [checkpoint] = await fetch(client, "SELECT * FROM @s.checkpoints WHERE name = 's'")
    assert checkpoint["value"] == stored

    second_client.register(evolving_v2)
    await advance_clock(client, 61)
    before = await row_counts(client)
    await run_until_idle(second_client)

    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.FAILED, info
    assert info.error is not None
    assert info.error["type"] == "durable_trio._errors.SerializationError"
    assert info.error["retryable"] is False
    check_message(info.error["message"], fragments)
    assert await row_counts(client) == before
    [unchanged] = await fetch(client, "SELECT * FROM @s.checkpoints WHERE name = 's'")
    assert unchanged["value"] == stored


@dt.task("child_a")
async def child_a(ctx: dt.TaskContext, p: Any) -> str:
    return "a"


@dt.task("child_b")
async def child_b(ctx: dt.TaskContext, p: Any) -> str:
    return "b"


@dt.task("parent")
async def parent_v1(ctx: dt.TaskContext, p: Any) -> str:
    await ctx.spawn("child", child_a, {})
    await ctx.sleep_for("nap", 60)
    return "v1"


@dt.task("parent")
async def parent_v2(ctx: dt.TaskContext, p: Any) -> str:
    await ctx.spawn("child", child_b, {})
    return "v2"


async def test_replaying_a_child_spawn_as_another_task_is_a_replay_mismatch(
    client: dt.Durable, second_client: dt.Durable
) -> None:
    client.register(parent_v1)
    spawned = await client.spawn(parent_v1, None)
    await run_until_idle(client)
    children = await fetch(
        client, "SELECT task_name, state FROM @s.tasks WHERE parent_task_id = %s", spawned.task_id
    )
    assert children == [{"task_name": "child_a", "state": "pending"}]

    second_client.register(parent_v2, child_a, child_b)
    await advance_clock(client, 61)
    before = await row_counts(client)
    await run_until_idle(second_client)

    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.FAILED, info
    assert info.error is not None
    assert info.error["type"] == "durable_trio._errors.ReplayMismatch"
    assert info.error["retryable"] is False
    check_message(info.error["message"], ("'child'", "'child_a'", "'child_b'"))
    after = await row_counts(client)
    assert after["tasks"] == before["tasks"], "no second child may be spawned"
    assert after["checkpoints"] == before["checkpoints"]
    names = await fetch(
        client, "SELECT task_name FROM @s.tasks WHERE parent_task_id = %s", spawned.task_id
    )
    assert names == [{"task_name": "child_a"}]


# -- looks hostile, but allowed: stored exactly as given --------------------------------------

ODD_EVENT_NAMES = [
    pytest.param("it's ready", id="single-quote"),
    pytest.param('say "ready"', id="double-quote"),
    pytest.param("ready; DROP TABLE events; --", id="semicolon-sql"),
    pytest.param("'); DELETE FROM tasks; --", id="quote-paren-sql"),
    pytest.param("e" * 200, id="exactly-200"),
    pytest.param("bereit \N{SNOWMAN} \u00e9v\u00e9nement", id="unicode"),
    pytest.param("a\\u0000b", id="backslash-u0000-text"),
]


@pytest.mark.parametrize("name", ODD_EVENT_NAMES)
async def test_odd_event_names_round_trip(client: dt.Durable, name: str) -> None:
    before = await row_counts(client)
    await client.emit_event(name, {"name": name})
    rows = await fetch(client, "SELECT queue, event_name, payload FROM @s.events")
    assert rows == [{"queue": "default", "event_name": name, "payload": {"name": name}}]
    after = await row_counts(client)
    assert after == {**before, "events": before["events"] + 1}


async def test_spawn_by_name_of_an_unregistered_task_is_written_and_stays_pending(
    client: dt.Durable,
) -> None:
    client.register(plain)
    before = await row_counts(client)
    spawned = await client.spawn_by_name("registered.elsewhere", {"a": [1, "two", None]})
    after = await row_counts(client)
    assert after == {**before, "tasks": before["tasks"] + 1, "runs": before["runs"] + 1}
    await run_until_idle(client)  # a worker without the code leaves it alone
    info = await client.get_task(spawned.task_id)
    assert info.state is dt.TaskState.PENDING
    assert (info.task_name, info.params) == ("registered.elsewhere", {"a": [1, "two", None]})
    [run] = await fetch(
        client, "SELECT state, worker_id FROM @s.runs WHERE task_id = %s", spawned.task_id
    )
    assert run == {"state": "pending", "worker_id": None}, "no worker may claim it"
    with pytest.raises(dt.WaitTimeout, match="did not finish"):
        await client.wait_result(None, spawned.task_id, timeout=0)


async def test_spawn_onto_a_queue_nobody_works_is_written_and_stays_pending(
    client: dt.Durable,
) -> None:
    client.register(plain)
    spawned = await client.spawn(plain, {}, options=dt.SpawnOptions(queue="nobody_works_here"))
    await run_until_idle(client)
    info = await client.get_task(spawned.task_id)
    assert (info.queue, info.state) == ("nobody_works_here", dt.TaskState.PENDING)
