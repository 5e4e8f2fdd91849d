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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg

from ._core.ids import uuid7
from ._core.schedules import (
    Cron,
    plan_firing,
    slot_key,
    validate_missed,
    validate_schedule_id,
)
from ._db import CONNECTION_LOST
from ._errors import ConfigurationError, InvalidInput, ScheduleNotFound
from ._rows import DueSchedule, ScheduleInfo
from ._store import Store

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
    row = prepare_spawn(task, params, options)
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


async def fire_due_schedules(store: Store, limit: int = 100) -> int:
    """Spawn the due slots of up to `limit` due schedules; return how many tasks were
    created. Safe to run in any number of workers at once."""
    created = 0
    for row in await store.due_schedules(limit):
        sid = row.schedule_id
        try:
            rule = Cron.parse(row.cron, row.timezone)
            policy = validate_missed(row.missed)
            firing = plan_firing(rule, due_at=row.next_fire_at, now=row.now, missed=policy)
        except InvalidInput as ex:
            # Say a time zone this machine's tz database lacks: other workers may fire it.
            log.warning("schedule %r cannot be evaluated here (%s); skipping it", sid, ex)
            continue
        slots = [(slot_key(sid, s), s.isoformat(), uuid7(), uuid7()) for s in firing.slots]
        try:
            made = await store.fire_schedule(sid, row.next_fire_at, slots, firing.next_fire_at)
        except psycopg.errors.InvalidParameterValue as ex:
            # Written by hand or by an older version: spawn refuses its settings. It stays
            # due (nothing was written) without holding up the schedules after it.
            log.warning(
                "schedule %r cannot fire: spawn refuses its settings (%s); replace it with "
                "schedule() or remove it",
                sid,
                ex.diag.message_primary,
            )
            continue
        if made is None:
            continue  # another worker fired it first, or it changed meanwhile
        created += made
        _log_firing(sid, row, firing.slots, made)
    return created


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


async def schedule_pass(store: Store) -> None:
    """`fire_due_schedules` for a worker's periodic pass. A lost connection propagates
    (the worker backs off and retries); any other database error is logged and the pass
    tried again next time, so schedules never take the worker down."""
    try:
        await fire_due_schedules(store)
    except CONNECTION_LOST:
        raise
    except (psycopg.Error, ConfigurationError) as ex:
        log.warning("schedule pass failed (%s); trying again on the next pass", ex)
