"""Cron schedules without a database: validation, next slots across DST, missed slots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durable_trio import InvalidInput
from durable_trio._core.schedules import (
    MAX_CATCH_UP,
    ON_TIME,
    Cron,
    plan_firing,
    slot_key,
    validate_missed,
    validate_schedule_id,
)


def at(text: str) -> datetime:
    """A UTC instant from 'YYYY-MM-DD HH:MM'."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def slots(cron: Cron, start: datetime, count: int) -> list[datetime]:
    found = []
    for _ in range(count):
        start = cron.next_after(start)
        found.append(start)
    return found


# -- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "cron",
    ["", "* * * *", "0 0 * * * *", "61 * * * *", "* 24 * * *", "0 0 31 2 *", "nope", 5, None],
)
def test_bad_cron_is_refused(cron: Any) -> None:
    with pytest.raises(InvalidInput, match="cron"):
        Cron.parse(cron, "UTC")


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "../etc/passwd", "UTC\x00", 3, None])
def test_unknown_timezone_is_refused(zone: Any) -> None:
    with pytest.raises(InvalidInput, match="timezone"):
        Cron.parse("0 * * * *", zone)


@pytest.mark.parametrize("value", ["", "$internal", "a\nb", "x" * 201, 7, None])
def test_bad_schedule_id_is_refused(value: Any) -> None:
    with pytest.raises(InvalidInput, match="schedule id"):
        validate_schedule_id(value)


@pytest.mark.parametrize("value", ["never", "ALL", "", None, 1])
def test_bad_missed_policy_is_refused(value: Any) -> None:
    with pytest.raises(InvalidInput, match="missed"):
        validate_missed(value)


def test_aliases_and_whitespace() -> None:
    daily = Cron.parse("@daily", "UTC")
    assert daily.text == "@daily"
    assert daily.next_after(at("2030-01-01 10:00")) == at("2030-01-02 00:00")
    spaced = Cron.parse("  30   2 * *  * ", "Europe/Paris")
    assert spaced.text == "30 2 * * *"
    assert spaced.timezone == "Europe/Paris"


# -- next slots -----------------------------------------------------------------------


def test_next_is_strictly_after() -> None:
    hourly = Cron.parse("0 * * * *", "UTC")
    assert hourly.next_after(at("2030-01-01 10:00")) == at("2030-01-01 11:00")
    assert hourly.next_after(at("2030-01-01 10:59:59.999")) == at("2030-01-01 11:00")
    assert hourly.latest_at_or_before(at("2030-01-01 10:00")) == at("2030-01-01 10:00")
    assert hourly.latest_at_or_before(at("2030-01-01 10:59:59")) == at("2030-01-01 10:00")


def test_timezone_fixes_local_time() -> None:
    nine = Cron.parse("0 9 * * *", "America/New_York")
    # EST is UTC-5, EDT (from 2027-03-14) UTC-4: the same local hour, another UTC hour.
    assert slots(nine, at("2027-03-12 00:00"), 3) == [
        at("2027-03-12 14:00"),
        at("2027-03-13 14:00"),
        at("2027-03-14 13:00"),
    ]


def test_spring_forward_fires_once_after_the_gap() -> None:
    # Europe/Paris skips 02:00-03:00 local on 2027-03-28: 02:30 fires at 03:00 CEST.
    night = Cron.parse("30 2 * * *", "Europe/Paris")
    assert slots(night, at("2027-03-27 12:00"), 3) == [
        at("2027-03-28 01:00"),
        at("2027-03-29 00:30"),
        at("2027-03-30 00:30"),
    ]


def test_fall_back_fires_a_repeated_time_once() -> None:
    # 02:00-03:00 local happens twice on 2027-10-31 (CEST, then CET): 02:30 fires once.
    night = Cron.parse("30 2 * * *", "Europe/Paris")
    assert slots(night, at("2027-10-30 12:00"), 2) == [
        at("2027-10-31 00:30"),
        at("2027-11-01 01:30"),
    ]
    # Asked from inside the second 02:00-03:00 (after the first 02:30 fired): tomorrow;
    # and the latest slot is the one of the first 02:00-03:00, earlier in wall-clock time.
    assert night.next_after(at("2027-10-31 01:15")) == at("2027-11-01 01:30")
    assert night.latest_at_or_before(at("2027-10-31 01:15")) == at("2027-10-31 00:30")


def test_latest_slot_inside_a_repeated_hour() -> None:
    # 01:00-02:00 local happens twice in New York on 2027-11-07 (EDT, then EST).
    sevens = Cron.parse("*/7 * * * *", "America/New_York")
    assert sevens.latest_at_or_before(at("2027-11-07 06:02:13")) == at("2027-11-07 06:00")
    between = sevens.slots_between(at("2027-11-07 05:49"), at("2027-11-07 06:10"), 100)
    assert between == [at(f"2027-11-07 {t}") for t in ("05:49", "05:56", "06:00", "06:07")]


def test_wildcard_hours_follow_real_time_across_dst() -> None:
    hourly = Cron.parse("0 * * * *", "Europe/Paris")
    # Autumn: both 02:00 local (00:00 and 01:00 UTC) fire; every real hour does.
    assert slots(hourly, at("2027-10-30 22:30"), 4) == [
        at("2027-10-30 23:00"),
        at("2027-10-31 00:00"),
        at("2027-10-31 01:00"),
        at("2027-10-31 02:00"),
    ]
    # Spring: 01:00 CET then 03:00 CEST are one real hour apart.
    assert slots(hourly, at("2027-03-27 23:30"), 3) == [
        at("2027-03-28 00:00"),
        at("2027-03-28 01:00"),
        at("2027-03-28 02:00"),
    ]


@given(
    st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1)),
    st.sampled_from(
        ["*/7 * * * *", "30 2 * * *", "0,30 2 * * *", "*/20 1-3 * * *", "15 9 1 * *", "@hourly"]
    ),
    st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"]),
)
def test_next_and_latest_bracket_any_moment(naive: datetime, text: str, zone: str) -> None:
    cron = Cron.parse(text, zone)
    moment = naive.replace(tzinfo=UTC)
    following = cron.next_after(moment)
    latest = cron.latest_at_or_before(moment)
    assert following > moment
    assert latest is not None
    assert latest <= moment
    # Nothing in between: the slot after `latest` is `following`.
    assert cron.next_after(latest) == following


# -- missed slots ---------------------------------------------------------------------

HOURLY = Cron.parse("0 * * * *", "UTC")


def test_one_due_slot_fires_under_every_policy() -> None:
    due, now = at("2030-01-01 10:00"), at("2030-01-01 10:00:01")
    for missed in ("skip", "latest", "all"):
        firing = plan_firing(HOURLY, due_at=due, now=now, missed=missed)  # type: ignore[arg-type]
        assert firing.slots == (due,)
        assert firing.next_fire_at == at("2030-01-01 11:00")


def test_missed_slots_follow_the_policy() -> None:
    due, now = at("2030-01-01 10:00"), at("2030-01-01 15:30")
    skip = plan_firing(HOURLY, due_at=due, now=now, missed="skip")
    latest = plan_firing(HOURLY, due_at=due, now=now, missed="latest")
    every = plan_firing(HOURLY, due_at=due, now=now, missed="all")
    assert skip.slots == ()
    assert latest.slots == (at("2030-01-01 15:00"),)
    assert every.slots == tuple(at(f"2030-01-01 {h}:00") for h in range(10, 16))
    assert skip.next_fire_at == latest.next_fire_at == every.next_fire_at == at("2030-01-01 16:00")


def test_skip_still_fires_a_slot_found_a_little_late() -> None:
    due = at("2030-01-01 10:00")
    on_time = plan_firing(HOURLY, due_at=due, now=due + ON_TIME, missed="skip")
    late = plan_firing(HOURLY, due_at=due, now=due + ON_TIME + timedelta(seconds=1), missed="skip")
    assert on_time.slots == (due,)
    assert late.slots == ()


def test_all_is_capped_to_the_newest_slots() -> None:
    due, now = at("2030-01-01 00:00"), at("2030-02-01 00:30")  # 745 hourly slots
    every = plan_firing(HOURLY, due_at=due, now=now, missed="all")
    assert len(every.slots) == MAX_CATCH_UP
    assert every.slots[-1] == at("2030-02-01 00:00")
    assert list(every.slots) == sorted(every.slots)
    assert every.next_fire_at == at("2030-02-01 01:00")


def test_not_yet_due_fires_nothing() -> None:
    due = at("2030-01-01 10:00")
    firing = plan_firing(HOURLY, due_at=due, now=due - timedelta(seconds=1), missed="all")
    assert firing.slots == ()
    assert firing.next_fire_at == due


def test_slot_key_is_the_utc_instant() -> None:
    paris = at("2030-06-01 07:00").astimezone(Cron.parse("@daily", "Europe/Paris").zone)
    assert slot_key("report", paris) == "schedule:report:2030-06-01T07:00:00+00:00"


def test_a_due_time_off_the_rule_still_counts() -> None:
    # The stored next slot was computed under other rules (say another tz database).
    due, now = at("2030-01-01 10:30"), at("2030-01-01 12:10")
    every = plan_firing(HOURLY, due_at=due, now=now, missed="all")
    assert every.slots == (due, at("2030-01-01 11:00"), at("2030-01-01 12:00"))
    alone = plan_firing(HOURLY, due_at=due, now=at("2030-01-01 10:40"), missed="latest")
    assert alone.slots == (due,)


def test_slots_are_in_utc_whatever_zone_the_due_time_is_in() -> None:
    paris = Cron.parse("@hourly", "Europe/Paris").zone
    due = at("2030-01-01 10:00").astimezone(paris)
    firing = plan_firing(HOURLY, due_at=due, now=at("2030-01-01 10:00:02"), missed="latest")
    assert firing.slots == (at("2030-01-01 10:00"),)
    assert firing.slots[0].tzinfo is UTC
