"""The only module that executes SQL: migrations and the named queries in sql/.

It answers in typed rows (_rows) and JSON text; what to do with them is decided
elsewhere. Every statement is a sans-IO operation (_sql) driven by `Store.run`, so one
mapping of schema errors (`_sql.guarded`) serves the store and the clients alike.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias, TypeVar
from uuid import UUID

import attrs
import psycopg
import trio

from . import _serde, _sql
from ._clientcore import SpawnResult, deliver, insert
from ._core.durations import MAX_DURATION, interval
from ._core.ids import uuid7
from ._core.names import validate_schema
from ._db import CONNECTION_ERRORS, Pool, TrioConnection
from ._errors import DatabaseUnavailable, InvalidInput, LeaseLost
from ._fleet import UnservedTasks, WorkerInfo
from ._retention import CleanupResult, rest_after
from ._rows import ClaimedRun, DueSchedule, ExpiredRun, ScheduleInfo, StoredOutcome
from ._schema import migrations, query_texts, render, sql_dir
from ._sql import Op, Row, Statement, array_literal, guarded

__all__ = ["DATA_ERRORS", "ClaimArgs", "Connection", "Store", "migrations", "sql_dir"]

T = TypeVar("T")

# What fire_schedule asks, with a before_spawn hook, of a schedule it holds: (queue,
# task_name, the schedule's headers) -> a JSON array of each slot's headers to add.
Stamp: TypeAlias = Callable[[str, str, dict[str, Any]], str]
# The start of the due schedules' order.
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)

# What the store runs statements on: a trio-native connection (pooled, or a worker's
# owned transaction), or a caller's blocking one whose open transaction a spawn or an
# emit joins (driven from a worker thread).
Connection: TypeAlias = TrioConnection | psycopg.Connection[Any]

# What a statement raises because of the data of a row it touched (a timestamp out of
# range, a value that breaks a cast or a check, a trigger's RAISE): the same statement
# fails the same way every time, so the worker's loops isolate that row instead of
# retrying (docs/reliability.md, "Poison rows").
DATA_ERRORS: tuple[type[psycopg.Error], ...] = (
    psycopg.errors.DataError,
    psycopg.errors.IntegrityError,
    psycopg.errors.RaiseException,
)


@attrs.frozen
class ClaimArgs:
    """What to claim: up to `limit` runs of tasks `names` from `queue`, leased for
    `lease` seconds; with `version`, only tasks this code version may run."""

    queue: str
    names: Sequence[str]
    limit: int
    lease: float
    version: str | None = None

    def params(self, worker: str) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "worker": worker,
            "names": array_literal(self.names),
            "limit": self.limit,
            "lease": interval(self.lease),
            "version": self.version,
        }


class Store:
    """Executes durable_trio's SQL for one schema through one pool."""

    def __init__(self, pool: Pool, schema: str) -> None:
        self.pool = pool
        self.schema = validate_schema(schema)
        self._q = {name: render(text, schema) for name, text in query_texts().items()}

    # -- plumbing ---------------------------------------------------------------------

    async def run(self, op: Op[T], conn: Connection | None = None) -> T:
        """Drive an operation (see _sql): on `conn`, a caller's connection in its open
        transaction (a blocking one from a worker thread), or on a pooled one."""
        if isinstance(conn, psycopg.Connection):
            return await trio.to_thread.run_sync(_sql.run_blocking, conn, op)
        if conn is not None:
            return await _sql.run_async(conn, op)
        async with self.pool.acquire() as pooled, _lost_connection(pooled):
            return await _sql.run_async(pooled, op)

    def _named(self, name: str, params: Mapping[str, Any]) -> Op[list[Row]]:
        rows = yield Statement(self._q[name], params)
        return rows

    async def _all(
        self, name: str, params: Mapping[str, Any], conn: Connection | None = None
    ) -> list[Row]:
        """The rows of the named query; a schema that lacks what it names is a
        ConfigurationError saying to migrate (`_sql.guarded`)."""
        return await self.run(guarded(self.schema, self._named(name, params)), conn)

    async def _one(
        self, name: str, params: Mapping[str, Any], conn: Connection | None = None
    ) -> Row | None:
        rows = await self._all(name, params, conn)
        return rows[0] if rows else None

    async def _value(
        self, name: str, params: Mapping[str, Any], conn: Connection | None = None
    ) -> Any:
        """The one column of the one row the named query returns."""
        row = await self._one(name, params, conn)
        assert row is not None
        return next(iter(row.values()))

    # -- schema -----------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply missing migrations in one transaction; safe when processes race."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await _sql.run_async(conn, _sql.migrate(self.schema))

    async def schema_version(self) -> int | None:
        async with self.pool.acquire() as conn:
            return await _sql.run_async(conn, _sql.schema_version(self.schema))

    async def is_current(self) -> bool:
        """Whether the schema has every migration and function definition of this library."""
        async with self.pool.acquire() as conn:
            return await _sql.run_async(conn, _sql.is_current(self.schema))

    async def check_schema(self) -> None:
        """ConfigurationError unless the schema has every migration and function definition
        this library has."""
        async with self.pool.acquire() as conn:
            await _sql.run_async(conn, _sql.check_schema(self.schema))

    # -- spawning ---------------------------------------------------------------------

    async def spawn(self, row: dict[str, Any], conn: Connection | None = None) -> SpawnResult[Any]:
        """A prepared spawn row (ClientCore.spawn_row) inserted, on `conn` if given."""
        return await self.run(guarded(self.schema, insert(self.schema, row)), conn)

    async def parent_of(self, task_id: UUID, conn: Connection | None = None) -> UUID | None:
        """The task's parent (None for a top-level task or one that is gone)."""
        parent: UUID | None = await self._value("task_parent", {"task_id": task_id}, conn)
        return parent

    # -- worker side ------------------------------------------------------------------

    async def claim(
        self,
        queue: str,
        worker: str,
        names: Sequence[str],
        limit: int,
        lease: float,
        version: str | None = None,
        *,
        singly: bool = False,
    ) -> list[ClaimedRun]:
        """Claimed runs (see claim_runs). `singly`: one run at a time, each in its own
        subtransaction, for when a claim failed on some run's data: a run whose claim
        fails has its task failed for good (see claim_runs, p_singly), the others are
        claimed as without."""
        params = ClaimArgs(queue, names, limit, lease, version).params(worker)
        rows = await self._all("claim_runs_singly" if singly else "claim_runs", params)
        return [ClaimedRun(**row) for row in rows]

    async def heartbeat(
        self, worker: str, runs: Sequence[UUID], lease: float
    ) -> dict[UUID, tuple[datetime, bool]]:
        """Runs still held by `worker`: run_id -> (lease expiry, renewed now). A held run
        that was not renewed is busy in its own fenced transaction; a run missing from
        the answer is lost."""
        rows = await self._all(
            "heartbeat", {"worker": worker, "runs": list(runs), "lease": interval(lease)}
        )
        return {row["run_id"]: (row["lease_expires_at"], row["renewed"]) for row in rows}

    async def lost_runs(self, runs: Sequence[UUID]) -> dict[UUID, tuple[str, str | None]]:
        """run_id -> (the run's state, its task's cancel reason), for runs a heartbeat
        lost."""
        rows = await self._all("lost_runs", {"runs": list(runs)})
        return {row["run_id"]: (row["state"], row["cancel_reason"]) for row in rows}

    async def record(
        self,
        worker: str,
        checkpoints: Sequence[tuple[UUID, str, str]],
        completions: Sequence[tuple[UUID, str]],
        claims: Mapping[UUID, datetime] | None = None,
    ) -> set[UUID]:
        """Write checkpoints (run_id, name, JSON) then completions (run_id, result JSON)
        for runs `worker` owns, in one transaction; with `claims` (run_id -> claimed_at),
        only under that very claim. Returns the runs that were owned: nothing was
        written for the others."""
        claims = claims or {}
        one = _lone_write(worker, checkpoints, completions, claims)
        if one is not None:
            return {one["run_id"]} if await self._value("record_one", one) else set()
        writes = _writes_json(checkpoints, completions, claims)
        owned = await self._value("record_runs", {"worker": worker, "writes": writes})
        return set(owned)

    async def record_and_claim(
        self,
        worker: str,
        checkpoints: Sequence[tuple[UUID, str, str]],
        completions: Sequence[tuple[UUID, str]],
        claims: Mapping[UUID, datetime],
        claim: ClaimArgs,
    ) -> tuple[set[UUID], list[ClaimedRun]]:
        """`record`, then `claim` in the same transaction and round trip: the owned runs,
        and the claimed rows as `claim` returns them."""
        params = claim.params(worker)
        one = _lone_write(worker, checkpoints, completions, claims)
        if one is not None:
            rows = await self._all("record_one_and_claim", params | one)
        else:
            params["writes"] = _writes_json(checkpoints, completions, claims)
            rows = await self._all("record_and_claim", params)
        owned = set(rows[0]["owned"])
        claimed = []
        for row in rows:
            del row["owned"]
            if row["run_id"] is not None:  # NULL claim columns: nothing was claimed
                claimed.append(ClaimedRun(**row))
        return owned, claimed

    async def set_checkpoint(self, run_id: UUID, worker: str, name: str, value: str) -> bool:
        """One fenced checkpoint; False if `worker` no longer owns the run."""
        return run_id in await self.record(worker, [(run_id, name, value)], [])

    @asynccontextmanager
    async def owned_transaction(
        self, run_id: UUID, worker: str
    ) -> AsyncIterator[tuple[TrioConnection, UUID]]:
        """A transaction holding the run's row lock; LeaseLost if the worker lost it.
        A connection lost on the way (commit included) is raised as DatabaseUnavailable."""
        async with self.pool.acquire() as conn, _lost_connection(conn), conn.transaction():
            task_id = await self._value(
                "lock_owned_run", {"run_id": run_id, "worker": worker}, conn
            )
            if task_id is None:
                raise LeaseLost(f"run {run_id} is no longer owned by {worker}")
            yield conn, task_id

    async def insert_checkpoint(
        self, conn: TrioConnection, task_id: UUID, run_id: UUID, name: str, value: str
    ) -> None:
        params = {"task_id": task_id, "run_id": run_id, "name": name, "value": value}
        await self._all("insert_checkpoint", params, conn)

    async def get_checkpoint(self, task_id: UUID, name: str) -> Any:
        """The stored value of one checkpoint, or None."""
        row = await self._one("get_checkpoint", {"task_id": task_id, "name": name})
        return None if row is None else row["value"]

    async def complete(self, run_id: UUID, worker: str, result: str) -> bool:
        """One fenced completion; False if `worker` no longer owns the run."""
        return run_id in await self.record(worker, [], [(run_id, result)])

    async def fail(
        self,
        run_id: UUID,
        worker: str | None,
        error: str,
        *,
        retry: bool,
        delay: float,
        new_run_id: UUID,
    ) -> str | None:
        state: str | None = await self._value(
            "fail_run",
            {
                "run_id": run_id,
                "worker": worker,
                "error": error,
                "retry": retry,
                "delay": interval(delay),
                "new_run_id": new_run_id,
            },
        )
        return state

    async def fail_for_good(
        self, run_id: UUID, worker: str | None, error: Mapping[str, Any]
    ) -> str | None:
        """Fail the run and its task with no further attempt, storing `error` (an
        `_failures` record): for a task whose data the engine itself cannot process."""
        return await self.fail(
            run_id, worker, _serde.dumps(error), retry=False, delay=0.0, new_run_id=uuid7()
        )

    async def suspend(self, run_id: UUID, worker: str, wake_at: datetime) -> bool:
        return bool(
            await self._value(
                "suspend_run", {"run_id": run_id, "worker": worker, "wake_at": wake_at}
            )
        )

    async def await_event(
        self,
        run_id: UUID,
        worker: str,
        queue: str,
        event: str,
        step: str,
        timeout: timedelta | None,
    ) -> tuple[str, Any]:
        """Deliver, time out, or suspend; the deadline is fixed by the first call."""
        row = await self._one(
            "await_event",
            {
                "run_id": run_id,
                "worker": worker,
                "queue": queue,
                "event": event,
                "step": step,
                "timeout": timeout,
            },
        )
        assert row is not None
        return row["outcome"], row["payload"]

    async def release(self, run_id: UUID, worker: str) -> bool:
        return bool(await self._value("release_run", {"run_id": run_id, "worker": worker}))

    async def expired_runs(self, queues: Sequence[str], limit: int) -> list[ExpiredRun]:
        rows = await self._all("expired_runs", {"queues": array_literal(queues), "limit": limit})
        return [ExpiredRun(**row) for row in rows]

    async def enforce_deadlines(self, limit: int) -> int:
        """Cancel up to `limit` tasks past their max_pending_delay or max_duration that
        no claim or heartbeat would catch (suspended, or pending under a name no worker
        runs); return how many."""
        return int(await self._value("enforce_deadlines", {"limit": limit}))

    async def next_due(
        self, queues: Sequence[str], names: Sequence[str], version: str | None = None
    ) -> float | None:
        seconds: float | None = await self._value(
            "next_due",
            {
                "queues": array_literal(queues),
                "names": array_literal(names),
                "version": version,
            },
        )
        return seconds

    async def claimable_count(self, queues: Sequence[str], names: Sequence[str]) -> int:
        return int(
            await self._value(
                "claimable_count",
                {"queues": array_literal(queues), "names": array_literal(names)},
            )
        )

    async def run_outcomes(self, runs: Sequence[UUID]) -> dict[UUID, StoredOutcome]:
        """How the given runs stand, by run id (missing: no such run)."""
        rows = await self._all("run_outcomes", {"runs": list(runs)})
        return {
            row["run_id"]: StoredOutcome(row["state"], row["error"], row["retried"]) for row in rows
        }

    # -- client side ------------------------------------------------------------------

    async def emit_event(
        self, queue: str, event: str, payload: str, conn: Connection | None = None
    ) -> int:
        """An event with checked names and JSON text stored, on `conn` if given."""
        return await self.run(
            guarded(self.schema, deliver(self.schema, queue, event, payload)), conn
        )

    async def cancel(self, task_id: UUID, reason: str) -> int:
        return int(await self._value("cancel_task", {"task_id": task_id, "reason": reason}))

    async def register_worker(
        self,
        worker: str,
        host: str,
        pid: int,
        queues: Sequence[str],
        names: Sequence[str],
        concurrency: int,
        ttl: float,
    ) -> None:
        params = {"worker": worker, "host": host, "pid": pid, "concurrency": concurrency}
        lists = {"queues": list(queues), "names": list(names), "ttl": interval(ttl)}
        await self._all("register_worker", {**params, **lists})

    async def unregister_worker(self, worker: str) -> None:
        await self._all("unregister_worker", {"worker": worker})

    async def workers(self) -> list[WorkerInfo]:
        return [WorkerInfo(**row) for row in await self._all("workers", {})]

    async def unserved_tasks(self, threshold: float) -> list[UnservedTasks]:
        rows = await self._all("unserved_tasks", {"threshold": interval(threshold)})
        return [UnservedTasks(**row) for row in rows]

    async def cleanup(
        self,
        finished_before: datetime | None,
        events_before: datetime | None,
        batch: int,
        conn: TrioConnection | None = None,
        duty: float = 1.0,
    ) -> CleanupResult:
        """Retention in batches of at most `batch` rows of each kind, each batch its own
        transaction (short locks), until one finds less than a full batch; resting
        between batches so that they take `duty` of the time."""
        params = {"finished_before": finished_before, "events_before": events_before}
        total = CleanupResult()
        while True:
            started = trio.current_time()
            row = await self._one("cleanup", {**params, "batch": batch}, conn)
            assert row is not None
            removed = CleanupResult(**row)
            total += removed
            if not removed.full(batch):
                return total
            if duty < 1:
                await trio.sleep(rest_after(trio.current_time() - started, duty))

    async def cleanup_alone(
        self, older_than: float, batch: int, duty: float = 1.0
    ) -> CleanupResult | None:
        """A worker's retention pass: finished tasks and events older than `older_than`
        seconds, unless another worker of the schema is doing it now (then None)."""
        key = f"{self.schema}/retention"
        async with self.pool.acquire() as conn:
            cur = await conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0)) AS mine", (key,)
            )
            row = await cur.fetchone()
            if row is None or not row["mine"]:
                return None
            try:
                cut = await self.now(conn) - timedelta(seconds=older_than)
                return await self.cleanup(cut, cut, batch, conn, duty)
            finally:
                with trio.CancelScope(shield=True), suppress(*CONNECTION_ERRORS):
                    await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))

    async def now(self, conn: TrioConnection | None = None) -> datetime:
        value: datetime = await self._value("now", {}, conn)
        return value

    async def advance_clock(self, seconds: float) -> timedelta:
        """Move the clock forward; `InvalidInput` if its offset would pass MAX_DURATION."""
        row = await self._one("advance_clock", {"by": interval(seconds), "max": MAX_DURATION})
        if row is None:
            raise InvalidInput(
                f"advance_clock by {seconds:g} seconds would move the clock more than "
                f"{MAX_DURATION.days} days (MAX_DURATION) ahead of real time"
            )
        value: timedelta = row["offset_by"]
        return value

    # -- schedules --------------------------------------------------------------------

    async def put_schedule(self, row: dict[str, Any]) -> bool:
        """Create or replace a schedule (see the query); whether it is new."""
        return bool(await self._value("put_schedule", row))

    async def delete_schedule(self, schedule_id: str) -> bool:
        return await self._one("delete_schedule", {"schedule_id": schedule_id}) is not None

    async def list_schedules(self) -> list[ScheduleInfo]:
        return [ScheduleInfo.from_row(row) for row in await self._all("list_schedules", {})]

    async def get_schedule(self, schedule_id: str) -> ScheduleInfo | None:
        row = await self._one("get_schedule", {"schedule_id": schedule_id})
        return None if row is None else ScheduleInfo.from_row(row)

    async def pause_schedule(self, schedule_id: str) -> bool:
        """Whether this call paused it (False: paused already, or no such schedule)."""
        return await self._one("pause_schedule", {"schedule_id": schedule_id}) is not None

    async def resume_schedule(
        self, schedule_id: str, cron: str, timezone: str, next_fire_at: datetime
    ) -> bool:
        """Whether this call resumed it: False if it is not paused, or its cron or timezone
        are no longer `cron` and `timezone`."""
        params = {
            "schedule_id": schedule_id,
            "cron": cron,
            "timezone": timezone,
            "next_fire_at": next_fire_at,
        }
        return await self._one("resume_schedule", params) is not None

    async def due_schedules(
        self, limit: int, after: tuple[datetime, str] = (EARLIEST, "")
    ) -> list[DueSchedule]:
        """Up to `limit` schedules due now (not paused) after `after` in (next_fire_at,
        schedule_id) order (pass the last row's for the next page), each with the
        database's `now`."""
        params = {"limit": limit, "after_at": after[0], "after_id": after[1]}
        return [DueSchedule(**row) for row in await self._all("due_schedules", params)]

    async def fire_schedule(
        self,
        schedule_id: str,
        due: datetime,
        slots: Sequence[tuple[str, str, UUID, UUID]],
        next_fire_at: datetime,
        stamp: Stamp | None = None,
    ) -> int | None:
        """Spawn `slots` (idempotency key, slot as ISO text, task id, run id) of a
        schedule due at `due` and move it to `next_fire_at`, in one transaction; how many
        tasks were created, or None if the schedule was not due at `due` any more (fired
        by another worker, changed, paused or deleted): then nothing was written.

        With `stamp`, the schedule's row is locked first and `stamp(queue, task_name,
        headers)` (the schedule's) gives each slot's headers to add, as a JSON array,
        before the slots are spawned in the same transaction; anything it raises leaves
        nothing written."""
        params = {
            "schedule_id": schedule_id,
            "due": due,
            "keys": array_literal(slot[0] for slot in slots),
            "slots": array_literal(slot[1] for slot in slots),
            "tasks": [slot[2] for slot in slots],
            "runs": [slot[3] for slot in slots],
            "next_fire_at": next_fire_at,
            "headers": None,
        }
        if stamp is None:
            created: int | None = await self._value("fire_schedule", params)
            return created
        return await self.run(guarded(self.schema, self._fire_stamped(params, stamp)))

    def _fire_stamped(self, params: dict[str, Any], stamp: Stamp) -> Op[int | None]:
        # A statement or `stamp` that raises leaves the transaction open: the pool rolls
        # back a connection handed back inside one.
        yield Statement("BEGIN")
        rows = yield Statement(self._q["schedule_to_fire"], params)
        if not rows:
            yield Statement("ROLLBACK")
            return None
        head = rows[0]
        params["headers"] = stamp(head["queue"], head["task_name"], head["headers"])
        rows = yield Statement(self._q["fire_schedule"], params)
        yield Statement("COMMIT")
        created: int | None = rows[0]["created"]
        return created


@asynccontextmanager
async def _lost_connection(conn: TrioConnection) -> AsyncIterator[None]:
    """Report a connection that died mid-call as DatabaseUnavailable (other database
    errors, such as a cancelled query or a constraint, pass through unchanged)."""
    try:
        yield
    except CONNECTION_ERRORS as ex:
        if conn.healthy:
            raise
        raise DatabaseUnavailable(f"lost the database connection: {ex}") from ex


def _lone_write(
    worker: str,
    checkpoints: Sequence[tuple[UUID, str, str]],
    completions: Sequence[tuple[UUID, str]],
    claims: Mapping[UUID, datetime],
) -> dict[str, Any] | None:
    """record_one's parameters when the writes are what it takes (one run: a checkpoint,
    or its completion after at most one checkpoint), else None: a batch for record_runs."""
    if len(checkpoints) > 1 or len(completions) > 1 or not (checkpoints or completions):
        return None
    run_id, result = completions[0] if completions else (checkpoints[0][0], None)
    name, value = (None, None)
    if checkpoints:
        checkpoint_run, name, value = checkpoints[0]
        if checkpoint_run != run_id:
            return None
    return {
        "worker": worker,
        "run_id": run_id,
        "claimed_at": claims.get(run_id),
        "name": name,
        "value": value,
        "complete": bool(completions),
        "result": result,
    }


def _writes_json(
    checkpoints: Sequence[tuple[UUID, str, str]],
    completions: Sequence[tuple[UUID, str]],
    claims: Mapping[UUID, datetime],
) -> str:
    """record_runs' JSON array. The values are JSON texts already: spliced in, not
    re-encoded."""

    def claim(run_id: UUID) -> str:
        at = claims.get(run_id)
        return "" if at is None else f',"claimed_at":"{at.isoformat()}"'

    writes = [
        f'{{"run_id":"{run_id}"{claim(run_id)},"name":{json.dumps(name)},"value":{value}}}'
        for run_id, name, value in checkpoints
    ]
    writes += [
        f'{{"run_id":"{run_id}"{claim(run_id)},"value":{value}}}' for run_id, value in completions
    ]
    return "[" + ",".join(writes) + "]"
