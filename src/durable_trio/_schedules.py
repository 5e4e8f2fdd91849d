"""Cron schedules stored in Postgres and fired by the workers, with no extension.

A schedule is a row (sql/migrations/0005_schedules.sql) naming a task, its params and
spawn options, a cron expression and a time zone. Every worker's periodic reaping pass
calls `fire_due_schedules`: it reads the due schedules, decides in `_core.schedules`
which slots to spawn (the missed-slot policy) and the slot after, and hands that to
`fire_schedule`, which spawns and moves the schedule on in one transaction, only if no
other worker did so first. Each slot's task carries the idempotency key
``schedule:<id>:<slot in UTC>``, so however many workers race, crash or lose the database
mid-way, a slot is spawned exactly once: never twice (the key, and the moved row), and
never lost (the spawn and the move commit together, or neither does).

The firing worker's ``before_spawn`` hook runs for each slot it spawns, in that
transaction once it holds the schedule's row (so not for slots another worker fires),
and its headers are stored on that slot's task; declaring a schedule runs no hook.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from . import _serde
from ._core.ids import uuid7
from ._core.options import check_headers
from ._core.schedules import (
    Cron,
    plan_firing,
    slot_key,
    validate_missed,
    validate_schedule_id,
)
from ._db import CONNECTION_LOST
from ._errors import ConfigurationError, InvalidInput, ScheduleNotFound
from ._hooks import NO_HOOKS, Hooks, SpawnCall
from ._rows import DueSchedule, ScheduleInfo
from ._store import DATA_ERRORS, EARLIEST, Stamp, Store

__all__ = ["ScheduleInfo", "fire_due_schedules", "schedule_pass"]

log = logging.getLogger("durable_trio.schedules")


# Spawn settings a schedule cannot take: each slot has its own key and its own time.
_REFUSED = {
    "idempotency_key": "each slot's task gets the key 'schedule:<id>:<slot>'",
    "delay": "a task is due at its slot: express the time in the cron expression",
    "start_at": "a task is due at its slot: express the time in the cron expression",
}


async def put_schedule(
    store: Store,
    prepare_spawn: Callable[..., dict[str, Any]],
    schedule_id: str,
    task: Any,
    params: Any,
    *,
    cron: str,
    timezone: str,
    options: Any,
    missed: str,
) -> ScheduleInfo:
    """Validate everything, then create or replace the schedule (see Durable.schedule)."""
    sid = validate_schedule_id(schedule_id)
    policy = validate_missed(missed)
    rule = Cron.parse(cron, timezone)
    # No before_spawn hook here: it runs for each slot's task, where the slot is fired.
    row = prepare_spawn(task, params, options, hook=False)
    for field, why in _REFUSED.items():
        if row[field] is not None:
            raise InvalidInput(
                f"a schedule's options (given, or the task's defaults) cannot set {field}: {why}"
            )
    first = rule.next_after(await store.now())
    try:
        await store.put_schedule(_stored(sid, row, rule, policy, first))
    except psycopg.errors.InvalidParameterValue as ex:  # what spawn would refuse at a slot
        raise InvalidInput(
            f"schedule {sid!r}: its tasks could not be spawned: {ex.diag.message_primary}"
        ) from None
    return await get_schedule(store, sid)


def _stored(
    sid: str, row: dict[str, Any], rule: Cron, policy: str, first: datetime
) -> dict[str, Any]:
    """put_schedule's parameters."""
    return {
        "schedule_id": sid,
        "queue": row["queue"],
        "task_name": row["task_name"],
        "params": row["params"],
        "headers": row["headers"],
        "retry": row["retry"],
        "max_attempts": row["max_attempts"],
        "priority": row["priority"],
        "max_pending_delay": row["max_pending_delay"],
        "max_duration": row["max_duration"],
        "cron": rule.text,
        "timezone": rule.timezone,
        "missed": policy,
        "next_fire_at": first,
    }


async def get_schedule(store: Store, schedule_id: str) -> ScheduleInfo:
    sid = validate_schedule_id(schedule_id)
    row = await store.get_schedule(sid)
    if row is None:
        raise ScheduleNotFound(sid)
    return row


async def list_schedules(store: Store) -> list[ScheduleInfo]:
    return await store.list_schedules()


async def delete_schedule(store: Store, schedule_id: str) -> bool:
    return await store.delete_schedule(validate_schedule_id(schedule_id))


async def pause_schedule(store: Store, schedule_id: str) -> bool:
    sid = validate_schedule_id(schedule_id)
    if await store.pause_schedule(sid):
        return True
    await get_schedule(store, sid)  # ScheduleNotFound, or paused already
    return False


async def resume_schedule(store: Store, schedule_id: str) -> bool:
    """Resume from the first slot after now: slots passed while paused are not spawned."""
    while True:
        info = await get_schedule(store, schedule_id)
        if not info.paused:
            return False
        rule = Cron.parse(info.cron, info.timezone)
        first = rule.next_after(await store.now())
        # Refused if the schedule was changed meanwhile: then read it again.
        if await store.resume_schedule(info.schedule_id, info.cron, info.timezone, first):
            return True


# A pass reads the due schedules a page at a time, and fires at most `limit` of them.
PAGE = 500
# How long a worker leaves alone a schedule it could not fire (unless it is declared
# again), and the least time between two warnings about one schedule.
QUIET = 300.0


async def fire_due_schedules(store: Store, limit: int = 100, hooks: Hooks = NO_HOOKS) -> int:
    """Spawn the due slots of up to `limit` due schedules, calling `hooks.before_spawn`
    for each slot; return how many tasks were created. Safe to run in any number of
    workers at once. Schedules this process cannot fire are passed over (and not
    counted), however many there are, so they never hold up the others."""
    created = fired = 0
    after = (EARLIEST, "")
    while fired < limit:
        page = await store.due_schedules(PAGE, after)
        for row in page:
            if fired >= limit:
                break
            if TROUBLES.avoids(store.schema, row):
                continue
            made = await _fire(store, row, hooks)
            if made is not None:
                fired += 1
                created += made
        if len(page) < PAGE:
            break
        after = (page[-1].next_fire_at, page[-1].schedule_id)
    return created


async def _fire(store: Store, row: DueSchedule, hooks: Hooks) -> int | None:
    """Fire one due schedule: how many tasks it created; None if another worker fired it
    first (or it changed meanwhile), or if it cannot be fired here (warned)."""
    sid = row.schedule_id
    try:
        rule = Cron.parse(row.cron, row.timezone)
        policy = validate_missed(row.missed)
        firing = plan_firing(rule, due_at=row.next_fire_at, now=row.now, missed=policy)
    except InvalidInput as ex:
        # Say a time zone this machine's tz database lacks: other workers may fire it.
        TROUBLES.report(store.schema, row, "schedule %r cannot be evaluated here (%s)", sid, ex)
        return None
    # Ids in slot order: a catch-up's tasks list in the order of their slots.
    tasks, runs = sorted(uuid7() for _ in firing.slots), sorted(uuid7() for _ in firing.slots)
    isos = [s.isoformat() for s in firing.slots]
    slots = [
        (slot_key(sid, s), iso, task, run)
        for s, iso, task, run in zip(firing.slots, isos, tasks, runs, strict=True)
    ]
    stamp = None if hooks.before_spawn is None or not slots else _stamp(hooks, sid, isos)
    try:
        made = await store.fire_schedule(sid, row.next_fire_at, slots, firing.next_fire_at, stamp)
    except DATA_ERRORS as ex:
        # Written by hand or by an older version: spawn refuses its settings. It stays
        # due (nothing was written) without holding up the schedules after it.
        TROUBLES.report(
            store.schema,
            row,
            "schedule %r cannot fire: spawn refuses its settings (%s); replace it with "
            "schedule() or remove it",
            sid,
            ex.diag.message_primary,
        )
        return None
    except HookFailed as ex:
        # Tried again on the next pass: what the hook needs may be back by then.
        TROUBLES.report(
            store.schema,
            row,
            "schedule %r: its slots were not spawned, the before_spawn hook failed (%r); "
            "trying again on the next pass",
            sid,
            ex.__cause__,
            avoid=False,
        )
        return None
    TROUBLES.forget(store.schema, sid)
    if made is not None:
        _log_firing(sid, row, firing.slots, made)
    return made


class HookFailed(Exception):
    """The before_spawn hook raised, or returned headers that cannot be stored (the
    hook's error is the __cause__)."""


def _stamp(hooks: Hooks, sid: str, slots: list[str]) -> Stamp:
    """What fire_schedule calls once it holds the schedule: the hook's headers for each
    slot's task (each its own call: its own trace, say), as JSON."""
    hook = hooks.before_spawn
    assert hook is not None

    def stamp(queue: str, task_name: str, headers: dict[str, Any]) -> str:
        added = []
        for slot in slots:
            # What the slot's task will carry besides the hook's.
            seen = {**headers, "schedule_id": sid, "scheduled_at": slot}
            try:
                given = check_headers(hook(SpawnCall(task_name, queue, seen)))
                added.append(_serde.dumps(_serde.unstructure(given)))
            except Exception as ex:  # the hook's error is the user's: any type
                raise HookFailed from ex
        return "[" + ",".join(added) + "]"

    return stamp


class _Troubles:
    """The schedules this process could not fire, so that a pass neither tries them nor
    warns about them again for `QUIET` seconds (a schedule declared again, which changes
    its updated_at, is tried at once). Kept per process: each worker warns once."""

    def __init__(self) -> None:
        # (schema, schedule_id) -> (updated_at, until, whether passes avoid it meanwhile)
        self._seen: dict[tuple[str, str], tuple[datetime, float, bool]] = {}

    def _current(self, schema: str, row: DueSchedule) -> tuple[datetime, float, bool] | None:
        key = (schema, row.schedule_id)
        seen = self._seen.get(key)
        if seen is not None and (seen[0] != row.updated_at or time.monotonic() >= seen[1]):
            del self._seen[key]
            return None
        return seen

    def avoids(self, schema: str, row: DueSchedule) -> bool:
        seen = self._current(schema, row)
        return seen is not None and seen[2]

    def report(
        self, schema: str, row: DueSchedule, message: str, *args: Any, avoid: bool = True
    ) -> None:
        if self._current(schema, row) is not None:
            return  # warned already
        if len(self._seen) >= 10_000:  # a bound, whatever the number of schedules
            self._seen.clear()
        self._seen[(schema, row.schedule_id)] = (row.updated_at, time.monotonic() + QUIET, avoid)
        quiet = f"; not tried again by this process for {QUIET:.0f} s unless declared again"
        log.warning(message + ("" if not avoid else quiet), *args)

    def forget(self, schema: str, schedule_id: str) -> None:
        if self._seen:
            self._seen.pop((schema, schedule_id), None)


TROUBLES = _Troubles()


def _log_firing(sid: str, row: DueSchedule, slots: tuple[datetime, ...], made: int) -> None:
    if slots:
        log.info(
            "schedule %r fired %d slot(s), %s to %s: %d task(s) spawned",
            sid,
            len(slots),
            slots[0].isoformat(),
            slots[-1].isoformat(),
            made,
        )
    else:
        log.info(
            "schedule %r skipped the slot(s) missed since %s (missed='skip')",
            sid,
            row.next_fire_at.isoformat(),
        )


async def schedule_pass(store: Store, hooks: Hooks = NO_HOOKS) -> None:
    """`fire_due_schedules` for a worker's periodic pass. A lost connection propagates
    (the worker backs off and retries); any other database error is logged and the pass
    tried again next time, so schedules never take the worker down."""
    try:
        await fire_due_schedules(store, hooks=hooks)
    except CONNECTION_LOST:
        raise
    except (psycopg.Error, ConfigurationError) as ex:
        log.warning("schedule pass failed (%s); trying again on the next pass", ex)
