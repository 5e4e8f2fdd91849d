"""Cron schedules against the real database: stored, listed, paused, fired by workers
exactly once per slot (three workers racing), missed slots by policy, DST in the
database's time. The database clock is moved with advance_clock; nothing sleeps on it."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
import trio
from psycopg.types.json import Jsonb

import durable_trio as dt
from durable_trio import _schedules
from durable_trio._core.schedules import slot_key
from durable_trio._store import Store
from durable_trio.testing import advance_clock, database_now, fire_schedules, run_until_idle
from support import FIXED_2_5, fetch, only_task_settings

FAST = dt.WorkerOptions(concurrency=4, poll_interval=0.01)


@attrs.frozen
class Label:
    text: str


@dt.task("tick")
async def tick(ctx: dt.TaskContext, p: Label) -> str:
    return f"{p.text} at {ctx.headers['scheduled_at']}"


async def advance_to(client: dt.Durable, moment: datetime) -> None:
    """Move the database clock forward to `moment` (it then goes on in real time)."""
    now = await database_now(client)
    assert moment > now, "the clock only moves forward"
    await advance_clock(client, (moment - now).total_seconds())


async def scheduled_tasks(client: dt.Durable) -> list[dict[str, Any]]:
    return await fetch(
        client,
        "SELECT task_id, idempotency_key, headers, params, state, queue FROM @s.tasks"
        " WHERE idempotency_key LIKE 'schedule:%%' ORDER BY idempotency_key",
    )


async def task_count(client: dt.Durable) -> int:
    return int((await fetch(client, "SELECT count(*) AS n FROM @s.tasks"))[0]["n"])


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def test_schedule_spawns_each_slot_once(client: dt.Durable) -> None:
    client.register(tick)
    info = await client.schedule("hourly", tick, Label("report"), cron="0 * * * *")
    now = await database_now(client)
    assert info.schedule_id == "hourly"
    assert info.task_name == "tick"
    assert info.queue == "default"
    assert (info.cron, info.timezone, info.missed, info.paused) == (
        "0 * * * *",
        "UTC",
        "latest",
        False,
    )
    assert info.next_fire_at is not None
    assert now < info.next_fire_at <= now + timedelta(hours=1)
    assert info.next_fire_at.minute == 0
    assert info.last_fired_at is None
    assert await client.schedules() == [info]

    assert await fire_schedules(client) == 0  # not due yet
    first = info.next_fire_at
    await advance_to(client, first + timedelta(seconds=1))
    assert await fire_schedules(client) == 1
    assert await fire_schedules(client) == 0  # the slot is spent
    # Three more hours, fired by the worker's own periodic pass.
    for hour in range(1, 4):
        await advance_to(client, first + timedelta(hours=hour, seconds=1))
        await run_until_idle(client, FAST)

    tasks = await scheduled_tasks(client)
    slots = [first + timedelta(hours=h) for h in range(4)]
    assert [t["idempotency_key"] for t in tasks] == [
        f"schedule:hourly:{slot.astimezone(UTC).isoformat()}" for slot in slots
    ]
    assert all(t["state"] == "completed" for t in tasks)
    assert tasks[0]["params"] == {"text": "report"}
    assert tasks[0]["headers"] == {
        "schedule_id": "hourly",
        "scheduled_at": first.astimezone(UTC).isoformat(),
    }
    result = await client.wait_result(tick, tasks[-1]["task_id"], timeout=10)
    assert result == f"report at {slots[-1].astimezone(UTC).isoformat()}"
    latest = await client.get_schedule("hourly")
    assert latest.last_fired_at == slots[-1]
    assert latest.last_task_id == tasks[-1]["task_id"]
    assert latest.next_fire_at == slots[-1] + timedelta(hours=1)


async def test_schedule_by_name_with_options(client: dt.Durable) -> None:
    options = dt.SpawnOptions(queue="reports", priority=3, headers={"tenant": "acme"})
    await client.schedule("by-name", "elsewhere", {"n": 1}, cron="@daily", options=options)
    info = await client.get_schedule("by-name")
    assert (info.task_name, info.queue, info.params) == ("elsewhere", "reports", {"n": 1})
    assert info.headers == {"tenant": "acme"}
    assert info.next_fire_at is not None
    await advance_to(client, info.next_fire_at + timedelta(seconds=5))
    assert await fire_schedules(client) == 1
    [task] = await scheduled_tasks(client)
    assert task["queue"] == "reports"
    assert task["headers"]["tenant"] == "acme"
    assert task["headers"]["schedule_id"] == "by-name"
    row = (
        await fetch(client, "SELECT priority FROM @s.tasks WHERE task_id = %s", task["task_id"])
    )[0]
    assert row["priority"] == 3


async def test_every_spawn_setting_of_a_schedule_reaches_its_tasks(client: dt.Durable) -> None:
    options = dt.SpawnOptions(
        max_attempts=7,
        retry=dt.RetryStrategy.fixed(2.5),
        priority=-4,
        headers={"tenant": "acme"},
        cancellation=dt.CancellationPolicy(max_pending_delay=90, max_duration=3600.25),
    )
    await client.schedule("settings", "elsewhere", None, cron="@hourly", options=options)
    info = await client.get_schedule("settings")
    assert info.next_fire_at is not None
    await advance_to(client, info.next_fire_at + timedelta(seconds=1))
    assert await fire_schedules(client) == 1
    row = await only_task_settings(client)
    assert (row["max_attempts"], row["priority"], row["retry"]) == (7, -4, FIXED_2_5)
    assert row["headers"] == {
        "tenant": "acme",
        "schedule_id": "settings",
        "scheduled_at": info.next_fire_at.astimezone(UTC).isoformat(),
    }
    assert row["max_pending_delay"] == timedelta(seconds=90)
    assert row["max_duration"] == timedelta(seconds=3600.25)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "five fields"),
        ({"cron": "0 0 * * * *"}, "five fields"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": ""}, "timezone"),
        ({"missed": "sometimes"}, "missed"),
        ({"schedule_id": ""}, "schedule id"),
        ({"schedule_id": "$mine"}, "schedule id"),
        ({"schedule_id": 42}, "schedule id"),
        ({"options": dt.SpawnOptions(idempotency_key="k")}, "idempotency_key"),
        ({"options": dt.SpawnOptions(delay=5)}, "delay"),
        ({"options": dt.SpawnOptions(start_at=datetime(2030, 1, 1, tzinfo=UTC))}, "start_at"),
        ({"options": "fast"}, "SpawnOptions"),
        ({"params": {"text": 3}}, "params"),
        ({"task": ""}, "task name"),
        # Within the Python client's 10 MiB of compact JSON, but not spawn's (which
        # measures the stored JSON's text, numbers written out): refused when written,
        # not at every slot.
        ({"task": "elsewhere", "params": [1e300] * 40_000}, "params are larger than 10 MiB"),
    ],
)
async def test_bad_input_writes_nothing(
    client: dt.Durable, kwargs: dict[str, Any], match: str
) -> None:
    client.register(tick)
    call: dict[str, Any] = {
        "schedule_id": "s",
        "task": tick,
        "params": Label("x"),
        "cron": "0 * * * *",
        "timezone": "UTC",
        "missed": "latest",
        "options": None,
    } | kwargs
    with pytest.raises(dt.InvalidInput, match=match):
        await client.schedule(call.pop("schedule_id"), call.pop("task"), call.pop("params"), **call)
    assert await client.schedules() == []
    assert await fetch(client, "SELECT * FROM @s.schedules") == []


async def test_a_slot_whose_key_names_a_task_spawns_nothing_and_reports_it(
    client: dt.Durable,
) -> None:
    info = await client.schedule("keyed", "elsewhere", None, cron="@hourly")
    assert info.next_fire_at is not None
    key = slot_key("keyed", info.next_fire_at)
    # Client spawns refuse these keys; a schedule deleted and declared again has used it.
    [earlier] = await fetch(
        client,
        "SELECT task_id FROM @s.spawn('default', 'elsewhere', 'null', %s::jsonb)",
        Jsonb({"idempotency_key": key}),
    )
    await advance_to(client, info.next_fire_at + timedelta(seconds=1))
    assert await fire_schedules(client) == 0
    assert await task_count(client) == 1
    fired = await client.get_schedule("keyed")
    assert fired.last_task_id == earlier["task_id"]
    assert fired.last_fired_at == info.next_fire_at


async def test_a_schedule_spawn_refuses_is_skipped_without_holding_up_the_others(
    client: dt.Durable, caplog: pytest.LogCaptureFixture
) -> None:
    first = await client.schedule("broken", "elsewhere", None, cron="@hourly")
    await client.schedule("sound", "elsewhere", None, cron="@hourly")
    # As an older version or a hand-written row might have left it.
    await fetch(
        client,
        "UPDATE @s.schedules SET options = options || '{\"max_attempts\": 0}'"
        " WHERE schedule_id = 'broken'",
    )
    assert first.next_fire_at is not None
    await advance_to(client, first.next_fire_at + timedelta(seconds=1))
    assert await fire_schedules(client) == 1
    [task] = await scheduled_tasks(client)
    assert task["headers"]["schedule_id"] == "sound"
    assert (await client.get_schedule("broken")).next_fire_at == first.next_fire_at
    assert "schedule 'broken' cannot fire" in caplog.text
    assert "max_attempts" in caplog.text
    # This process neither tries it nor warns about it again on every pass...
    caplog.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Store, "fire_schedule", unexpected)
        assert await fire_schedules(client) == 0
    assert caplog.records == []
    # ... but declared again (repaired), it fires on the next pass.
    await client.schedule("broken", "elsewhere", None, cron="@hourly")
    assert await fire_schedules(client) == 1


async def unexpected(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("not fired")


async def test_a_pass_goes_past_any_number_of_schedules_it_cannot_evaluate(
    client: dt.Durable, caplog: pytest.LogCaptureFixture
) -> None:
    """Due schedules this worker cannot evaluate (a time zone its tz database lacks) come
    first in the due order; a pass reads on past them, page after page, and warns about
    each once, not on every pass."""
    await client.schedule("zone", "elsewhere", None, cron="* * * * *")
    await fetch(
        client,
        "INSERT INTO @s.schedules SELECT 'zone' || n, queue, task_name, params, options, cron,"
        " 'Nowhere/Atlantis', missed, paused, next_fire_at, last_fired_at, last_task_id,"
        " created_at, updated_at FROM @s.schedules, generate_series(1, %s) n",
        BROKEN,
    )
    await fetch(client, "DELETE FROM @s.schedules WHERE schedule_id = 'zone'")
    await advance_clock(client, 3600)
    await client.schedule("sound", "elsewhere", None, cron="* * * * *")  # due after them
    await advance_clock(client, 120)
    with caplog.at_level(logging.WARNING, logger="durable_trio.schedules"):
        assert await fire_schedules(client) == 1
        assert len({r.getMessage().split("'")[1] for r in caplog.records}) == BROKEN
        assert len(caplog.records) == BROKEN
        caplog.clear()
        await advance_clock(client, 60)
        assert await fire_schedules(client) == 1
        assert caplog.records == []
    assert BROKEN > _schedules.PAGE > 100  # more than a page, and than a pass fires


BROKEN = 510


async def test_unknown_schedules(client: dt.Durable) -> None:
    with pytest.raises(dt.ScheduleNotFound, match="'nope'"):
        await client.get_schedule("nope")
    with pytest.raises(dt.ScheduleNotFound):
        await client.pause_schedule("nope")
    with pytest.raises(dt.ScheduleNotFound):
        await client.resume_schedule("nope")
    assert await client.unschedule("nope") is False
    with pytest.raises(dt.InvalidInput, match="schedule id"):
        await client.unschedule("")


async def test_replace_pause_resume_unschedule(client: dt.Durable) -> None:
    client.register(tick)
    first = await client.schedule("s", tick, Label("a"), cron="0 * * * *")
    # Re-declared with other params: same next slot, so a deploy neither skips nor repeats.
    again = await client.schedule("s", tick, Label("b"), cron="0 * * * *", missed="all")
    assert again.next_fire_at == first.next_fire_at
    assert (again.params, again.missed, again.created_at) == (
        {"text": "b"},
        "all",
        first.created_at,
    )
    # Another cron: its own next slot.
    daily = await client.schedule("s", tick, Label("b"), cron="0 0 * * *")
    assert daily.next_fire_at is not None
    assert (daily.next_fire_at.hour, daily.next_fire_at.minute) == (0, 0)

    assert await client.pause_schedule("s") is True
    assert await client.pause_schedule("s") is False
    paused = await client.get_schedule("s")
    assert paused.paused
    assert paused.next_fire_at is None
    # Replacing a paused schedule keeps it paused.
    assert (await client.schedule("s", tick, Label("c"), cron="0 * * * *")).paused
    await advance_clock(client, 3 * 3600)
    assert await fire_schedules(client) == 0  # paused: three slots pass unspawned
    assert await client.resume_schedule("s") is True
    assert await client.resume_schedule("s") is False
    resumed = await client.get_schedule("s")
    now = await database_now(client)
    assert resumed.next_fire_at is not None
    assert now < resumed.next_fire_at <= now + timedelta(hours=1)
    assert await fire_schedules(client) == 0  # slots missed while paused are not spawned
    assert await task_count(client) == 0

    assert await client.unschedule("s") is True
    assert await client.schedules() == []
    await advance_clock(client, 3600)
    assert await fire_schedules(client) == 0


async def test_missed_slots_follow_the_policy(client: dt.Durable) -> None:
    client.register(tick)
    for missed in ("skip", "latest", "all"):
        await client.schedule(missed, tick, Label(missed), cron="0 * * * *", missed=missed)  # type: ignore[arg-type]
    info = await client.get_schedule("all")
    assert info.next_fire_at is not None
    due = info.next_fire_at
    # No worker for five and a half hours: slots due+0h .. due+5h were missed.
    await advance_to(client, due + timedelta(hours=5, minutes=30))
    assert await fire_schedules(client) == 1 + 6
    by_schedule = Counter(t["headers"]["schedule_id"] for t in await scheduled_tasks(client))
    assert by_schedule == {"latest": 1, "all": 6}
    latest = await client.get_schedule("latest")
    assert latest.last_fired_at == due + timedelta(hours=5)
    for schedule in await client.schedules():
        assert schedule.next_fire_at == due + timedelta(hours=6)
    assert (await client.get_schedule("skip")).last_fired_at is None
    # Back to normal: the next slot, found on time, fires under every policy.
    await advance_to(client, due + timedelta(hours=6, seconds=10))
    assert await fire_schedules(client) == 3


async def test_all_is_capped(client: dt.Durable) -> None:
    client.register(tick)
    info = await client.schedule("busy", tick, Label("x"), cron="* * * * *", missed="all")
    assert info.next_fire_at is not None
    await advance_to(client, info.next_fire_at + timedelta(hours=3))  # 181 slots
    assert await fire_schedules(client) == 100
    keys = [t["idempotency_key"] for t in await scheduled_tasks(client)]
    newest = info.next_fire_at + timedelta(hours=3)
    assert keys[-1] == f"schedule:busy:{newest.astimezone(UTC).isoformat()}"
    # Made in one millisecond, their ids still follow the slots: listed in slot order.
    page = await client.list_tasks(limit=1000)
    assert [t.task_id for t in page.items] == [t["task_id"] for t in await scheduled_tasks(client)]


async def test_dst_in_the_database_clock(client: dt.Durable) -> None:
    """Europe/Paris: 02:30 local daily, and hourly, through the autumn and spring changes,
    with the database clock stepped hour by hour."""
    client.register(tick)
    await advance_to(client, utc("2027-10-30 12:00"))
    zone = "Europe/Paris"
    # missed="skip": the months between the two changes are skipped, not caught up.
    await client.schedule(
        "night", tick, Label("n"), cron="30 2 * * *", timezone=zone, missed="skip"
    )
    await client.schedule(
        "hourly", tick, Label("h"), cron="0 * * * *", timezone=zone, missed="skip"
    )
    for start in (utc("2027-10-30 12:00"), utc("2028-03-25 12:00")):
        for half_hours in range(1, 80):
            await advance_to(client, start + timedelta(minutes=30 * half_hours, seconds=1))
            await fire_schedules(client)

    fired: dict[str, list[datetime]] = {"night": [], "hourly": []}
    for task in await scheduled_tasks(client):
        fired[task["headers"]["schedule_id"]].append(
            datetime.fromisoformat(task["headers"]["scheduled_at"])
        )
    # 02:30 exists twice on 2027-10-31 (fires once, the first time) and not at all on
    # 2028-03-26 (fires at 03:00 CEST, the first minute after the gap).
    assert sorted(fired["night"]) == [
        utc("2027-10-31 00:30"),
        utc("2027-11-01 01:30"),
        utc("2028-03-26 01:00"),
        utc("2028-03-27 00:30"),
    ]
    # Hourly follows real time: 25 slots on the autumn day, 23 on the spring day.
    hourly = sorted(fired["hourly"])
    autumn = [s for s in hourly if utc("2027-10-30 22:00") <= s < utc("2027-10-31 23:00")]
    spring = [s for s in hourly if utc("2028-03-25 23:00") <= s < utc("2028-03-26 22:00")]
    assert len(autumn) == 25
    assert len(spring) == 23
    assert len(hourly) == len(set(hourly))


async def test_three_workers_racing_spawn_each_slot_once(client: dt.Durable) -> None:
    """Three workers (and three bare passes besides) race for every slot of an
    every-minute schedule; each slot is spawned once. fire_schedule is spied on to show
    the race is real: passes that found a slot due and lost it to another."""
    client.register(tick)
    info = await client.schedule("minutely", tick, Label("m"), cron="* * * * *")
    assert info.next_fire_at is not None
    outcomes: Counter[str] = Counter()
    real_fire = Store.fire_schedule

    async def spy(self: Store, *args: Any, **kwargs: Any) -> int | None:
        made = await real_fire(self, *args, **kwargs)
        outcomes["won" if made else "lost"] += 1
        return made

    n_slots = 15
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Store, "fire_schedule", spy)
        async with trio.open_nursery() as nursery:
            workers = [client.new_worker(FAST) for _ in range(3)]
            for worker in workers:
                await nursery.start(worker.run)
            for minute in range(n_slots):
                await advance_to(client, info.next_fire_at + timedelta(minutes=minute, seconds=1))
                async with trio.open_nursery() as racers:
                    for _ in range(3):
                        racers.start_soon(_schedules.fire_due_schedules, client.store)
                with trio.fail_after(30):
                    while len(await scheduled_tasks(client)) < minute + 1:
                        await trio.sleep(0.01)
            for worker in workers:
                worker.shutdown()

    # Counted by the slot each task was spawned for, not by its key (which the unique
    # index would keep single anyway).
    keys = Counter(
        f"schedule:minutely:{t['headers']['scheduled_at']}" for t in await scheduled_tasks(client)
    )
    slots = [info.next_fire_at + timedelta(minutes=m) for m in range(n_slots)]
    expected = [f"schedule:minutely:{slot.astimezone(UTC).isoformat()}" for slot in slots]
    assert sorted(keys) == expected
    assert set(keys.values()) == {1}
    assert outcomes["won"] == n_slots
    assert outcomes["lost"] > 0


async def test_pause_and_resume_are_the_short_names(client: dt.Durable) -> None:
    await client.schedule("short", "anything", None, cron="@hourly")
    assert await client.pause("short")
    assert (await client.get_schedule("short")).paused
    assert await client.resume("short")
    assert not (await client.get_schedule("short")).paused
