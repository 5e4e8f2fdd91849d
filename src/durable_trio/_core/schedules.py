"""Cron schedules decided without a database: validation, the next slot, and which missed
slots to spawn.

Cron expressions are parsed and evaluated by cronsim (a maintained library that follows
Debian cron's rules, daylight saving time included); nothing here re-implements cron.
Every time is timezone-aware; slots are returned in UTC.

Daylight saving time, as cronsim (and Debian cron) decides it, for a schedule whose
minute and hour fields are both fixed ("30 2 * * *"): a wall-clock time skipped by the
spring change fires at the first minute after the gap (03:00); a time that occurs twice
in autumn fires once, at its first occurrence. A schedule with a wildcard or stepped
minute or hour ("0 * * * *", "*/15 * * * *") follows real time: it fires every hour (or
quarter) that passes, both of the repeated hour's occurrences included.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Literal

import attrs
from cronsim import CronSim, CronSimError

from .._errors import InvalidInput
from .names import validate_name
from .options import SCHEDULE_KEYS

__all__ = [
    "MAX_CATCH_UP",
    "MISSED_POLICIES",
    "ON_TIME",
    "Cron",
    "Firing",
    "MissedPolicy",
    "plan_firing",
    "slot_key",
    "validate_missed",
    "validate_schedule_id",
]

MissedPolicy = Literal["skip", "latest", "all"]
MISSED_POLICIES: tuple[MissedPolicy, ...] = ("skip", "latest", "all")
# "all" spawns at most this many missed slots in one pass: the newest ones.
MAX_CATCH_UP = 100
# "skip" still fires a slot found this late (a worker's pass runs every poll_interval).
ON_TIME = timedelta(seconds=60)
# The usual shorthands, as the five fields they stand for.
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_ANCHOR = datetime(2000, 1, 1, tzinfo=UTC)
# Slots of one repeated hour at most (a clock change moves by an hour or less).
_FOLD_SLOTS = 60


def validate_schedule_id(value: object) -> str:
    """Schedule ids are names: printable text of 1..200 characters, not starting with '$'."""
    return validate_name(value, what="schedule id")


def validate_missed(value: object) -> MissedPolicy:
    for policy in MISSED_POLICIES:
        if value == policy and isinstance(value, str):
            return policy
    raise InvalidInput(f"missed must be one of 'skip', 'latest' or 'all', got {value!r}")


def _zone(name: object) -> zoneinfo.ZoneInfo:
    if not isinstance(name, str) or not name or len(name) > 100 or not name.isprintable():
        raise InvalidInput(f"timezone must be an IANA time zone name, got {name!r}")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"unknown timezone {name!r}: use an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None


def _expression(text: object) -> str:
    """The five cron fields of `text` (an alias expanded), checked by cronsim."""
    if not isinstance(text, str):
        raise InvalidInput(f"cron must be a string, got {type(text).__name__}")
    fields = ALIASES.get(text.strip().lower(), text).split()
    if len(fields) != 5:
        raise InvalidInput(
            f"cron {text!r} must have five fields (minute hour day-of-month month "
            "day-of-week), or be one of " + ", ".join(ALIASES)
        )
    expression = " ".join(fields)
    try:
        CronSim(expression, _ANCHOR)
    except CronSimError as ex:
        raise InvalidInput(f"cron {text!r} is invalid: {ex}") from None
    return expression


@attrs.frozen
class Cron:
    """A validated cron expression evaluated in an IANA time zone. `text` is the
    expression as given (whitespace normalised); construct with `Cron.parse`."""

    text: str
    timezone: str
    expression: str = attrs.field(repr=False)
    zone: zoneinfo.ZoneInfo = attrs.field(repr=False)

    @classmethod
    def parse(cls, text: object, timezone: object = "UTC") -> Cron:
        """InvalidInput for a malformed expression or an unknown time zone."""
        expression = _expression(text)
        zone = _zone(timezone)
        return cls(" ".join(str(text).split()), zone.key, expression, zone)

    def next_after(self, moment: datetime) -> datetime:
        """The first slot strictly after `moment`, in UTC. InvalidInput if there is none
        within 50 years (cronsim gives up there)."""
        # Local wall times can repeat (autumn), so a slot cronsim returns may still lie at
        # or before `moment` in real time: keep going until one is really later.
        for slot in CronSim(self.expression, moment.astimezone(self.zone)):
            if slot > moment:
                return slot.astimezone(UTC)
        raise InvalidInput(f"cron {self.text!r} has no slot within 50 years of {moment}")

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The last slot at or before `moment`, in UTC (None if none within 50 years)."""
        found = self._backwards(moment, None, 1)
        return self._forwards(found[0], moment, 1)[-1] if found else None

    def slots_between(self, first: datetime, last: datetime, limit: int) -> list[datetime]:
        """The newest `limit` slots from `first` (counted as a slot) to `last` (both
        included), oldest first."""
        # Every slot from `first` on is wanted, unless there are far more than `limit`.
        found = self._backwards(last, first, limit + _FOLD_SLOTS)
        start = found[0] if len(found) > limit else first
        return self._forwards(start, last, limit)

    def _backwards(self, last: datetime, first: datetime | None, count: int) -> list[datetime]:
        """Up to `count` slots from `last` back to `first` (if given), oldest first: a quick
        estimate. cronsim walks back in wall-clock time, which around an autumn clock
        change is not real time (a slot of the first of two repeated hours comes after
        one of the second): `_forwards` from the oldest one puts that right."""
        # Slots are whole minutes and cronsim's reverse walk starts strictly before the
        # time it is given: a minute later lets `last` itself count.
        probe = (last + timedelta(minutes=1)).astimezone(self.zone)
        found: list[datetime] = []
        for slot in CronSim(self.expression, probe, reverse=True):
            if (first is not None and slot < first) or len(found) >= count:
                break
            if slot <= last:
                found.append(slot.astimezone(UTC))
        return sorted(found)

    def _forwards(self, start: datetime, last: datetime, limit: int) -> list[datetime]:
        """The newest `limit` of `start` (a slot) and the slots after it up to `last`."""
        found = [start.astimezone(UTC)]
        while True:
            slot = self.next_after(found[-1])
            if slot > last:
                return found[-limit:]
            found.append(slot)


@attrs.frozen
class Firing:
    """What one pass does for a due schedule: spawn `slots` (oldest first; maybe none)
    and move the schedule on to `next_fire_at`."""

    slots: tuple[datetime, ...]
    next_fire_at: datetime


def plan_firing(cron: Cron, *, due_at: datetime, now: datetime, missed: MissedPolicy) -> Firing:
    """The slots to spawn for a schedule due at `due_at` (its first unspawned slot), seen
    at `now`. Usually exactly one slot is due; more have been missed when no worker ran
    for a while, and `missed` decides:

    - "skip": spawn the latest due slot only if it is at most `ON_TIME` late; drop the rest.
    - "latest": spawn the latest due slot (however late), drop the older ones.
    - "all": spawn every due slot, oldest first, but at most the newest `MAX_CATCH_UP`.

    The schedule then waits for the first slot after `now`.
    """
    due_at = due_at.astimezone(UTC)
    following = cron.next_after(now)
    if due_at > now:
        return Firing((), due_at)
    # `due_at` was computed as a slot: it counts even if the rules changed under it.
    latest = cron.latest_at_or_before(now)
    if latest is None or latest < due_at:
        latest = due_at
    if missed == "skip":
        slots: tuple[datetime, ...] = (latest,) if now - latest <= ON_TIME else ()
    elif missed == "latest":
        slots = (latest,)
    else:
        slots = tuple(cron.slots_between(due_at, now, MAX_CATCH_UP))
    return Firing(slots, following)


def slot_key(schedule_id: str, slot: datetime) -> str:
    """The idempotency key of one slot's task: a second spawn of it writes nothing."""
    return f"{SCHEDULE_KEYS}{schedule_id}:{slot.astimezone(UTC).isoformat()}"
