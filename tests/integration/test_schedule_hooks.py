"""A schedule's slots go through the firing worker's before_spawn hook, each slot its own
call, once, when it is fired (by a worker or a bare pass, racing or not); declaring a
schedule calls no hook. With OpenTelemetry: each slot's task its own trace, the spawn
counter counting slots, the start latency measured from the firing."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import durable_trio as dt
from durable_trio import _schedules
from durable_trio._store import Store
from durable_trio.contrib.opentelemetry import SPAWNED_AT, otel_hooks
from durable_trio.testing import advance_clock, fire_schedules, run_until_idle
from support import fetch

FAST = dt.WorkerOptions(concurrency=4, poll_interval=0.01)


@dt.task("tick")
async def tick(ctx: dt.TaskContext, p: None) -> dict[str, Any]:
    return dict(ctx.headers)


class Recorder:
    """A before_spawn hook that numbers its calls (a failure switch besides)."""

    def __init__(self) -> None:
        self.calls: list[dt.SpawnCall] = []
        self.failing: BaseException | None = None
        self.returns: dict[str, Any] | None = None

    def __call__(self, call: dt.SpawnCall) -> dict[str, Any]:
        if self.failing is not None:
            raise self.failing
        self.calls.append(call)
        if self.returns is not None:
            return self.returns
        return {"call": len(self.calls), "team": "from-hook"}


async def slot_tasks(client: dt.Durable) -> list[dict[str, Any]]:
    return await fetch(
        client,
        "SELECT task_id, headers FROM @s.tasks WHERE idempotency_key LIKE 'schedule:%%'"
        " ORDER BY task_id",
    )


async def test_declaring_calls_no_hook_and_each_fired_slot_calls_it_once(
    pg_url: str, schema: str
) -> None:
    hook = Recorder()
    options = dt.SpawnOptions(headers={"team": "ops", "region": "eu"})
    async with dt.Durable.connect(pg_url, schema=schema, hooks=dt.Hooks(hook)) as client:
        client.register(tick)
        info = await client.schedule(
            "minutely", tick, None, cron="* * * * *", options=options, missed="all"
        )
        assert hook.calls == []
        assert info.headers == {"team": "ops", "region": "eu"}  # nothing of a hook's
        assert info.next_fire_at is not None
        await advance_clock(client, info.next_fire_at - info.created_at + timedelta(minutes=2))
        assert await fire_schedules(client) == 3  # three missed slots, caught up
        tasks = await slot_tasks(client)

    # One call per slot, oldest first, told what the slot's task carries.
    slots = [call.headers["scheduled_at"] for call in hook.calls]
    assert len(slots) == 3
    assert slots == sorted(slots)
    for call in hook.calls:
        assert (call.task_name, call.queue, call.parent_task_id) == ("tick", "default", None)
        assert {k: call.headers[k] for k in ("team", "region", "schedule_id")} == {
            "team": "ops",
            "region": "eu",
            "schedule_id": "minutely",
        }
    # Each task has its own call's headers, over the schedule's; ids in slot order.
    assert [t["headers"] for t in tasks] == [
        {
            "team": "from-hook",
            "region": "eu",
            "call": n,
            "schedule_id": "minutely",
            "scheduled_at": slot,
        }
        for n, slot in enumerate(slots, 1)
    ]


async def test_a_running_worker_fires_slots_through_its_hooks(pg_url: str, schema: str) -> None:
    hook = Recorder()
    async with dt.Durable.connect(pg_url, schema=schema, hooks=dt.Hooks(hook)) as client:
        client.register(tick)
        info = await client.schedule("hourly", tick, None, cron="@hourly")
        assert info.next_fire_at is not None
        await advance_clock(client, info.next_fire_at - info.created_at + timedelta(seconds=1))
        async with client.worker(FAST):
            with trio.fail_after(20):
                while not (tasks := await slot_tasks(client)):
                    await trio.sleep(0.02)
    [task] = tasks
    assert task["headers"]["call"] == 1
    [call] = hook.calls
    assert call.headers["scheduled_at"] == task["headers"]["scheduled_at"]


async def test_racing_passes_call_the_hook_once_per_slot(pg_url: str, schema: str) -> None:
    """Only the pass that holds a schedule calls the hook for its slots: passes that lose
    the race to another call nothing."""
    hook = Recorder()
    losses = 0
    real_fire = Store.fire_schedule

    async def spy(self: Store, *args: Any, **kwargs: Any) -> int | None:
        nonlocal losses
        made = await real_fire(self, *args, **kwargs)
        losses += made is None
        return made

    async with dt.Durable.connect(pg_url, schema=schema, hooks=dt.Hooks(hook)) as client:
        for i in range(30):
            await client.schedule(f"s{i:02}", "elsewhere", None, cron="* * * * *")
        await advance_clock(client, 61)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Store, "fire_schedule", spy)
            async with trio.open_nursery() as racers:
                for _ in range(4):
                    racers.start_soon(fire_schedules, client)
        tasks = await slot_tasks(client)
    assert len(tasks) == 30
    assert sorted(call.headers["schedule_id"] for call in hook.calls) == [
        f"s{i:02}" for i in range(30)
    ]
    assert sorted(t["headers"]["call"] for t in tasks) == list(range(1, 31))
    assert losses > 0  # the race was real


@pytest.mark.parametrize(
    ("failure", "returns", "shown"),
    [
        (RuntimeError("collector down"), None, "collector down"),
        (None, {"$bad": 1}, "header name"),
        (None, {"at": object()}, "object"),
        (None, {"at": float("nan")}, "NaN"),
    ],
)
async def test_a_failing_hook_leaves_the_slot_due_and_warns_once(
    pg_url: str,
    schema: str,
    caplog: pytest.LogCaptureFixture,
    failure: BaseException | None,
    returns: dict[str, Any] | None,
    shown: str,
) -> None:
    """A hook that raises (or returns headers that cannot be stored) spawns nothing for the
    schedule and holds up no other; the slot fires once the hook works again."""
    hook = Recorder()
    async with dt.Durable.connect(pg_url, schema=schema, hooks=dt.Hooks(hook)) as client:
        info = await client.schedule("s", "elsewhere", None, cron="@hourly")
        assert info.next_fire_at is not None
        await advance_clock(client, info.next_fire_at - info.created_at + timedelta(seconds=1))
        hook.failing, hook.returns = failure, returns
        with caplog.at_level(logging.WARNING, logger="durable_trio.schedules"):
            assert await fire_schedules(client) == 0
            assert await fire_schedules(client) == 0
        [warning] = caplog.records
        assert "the before_spawn hook failed" in warning.getMessage()
        assert shown in warning.getMessage()
        assert await slot_tasks(client) == []
        assert (await client.get_schedule("s")).next_fire_at == info.next_fire_at
        hook.failing = hook.returns = None
        assert await fire_schedules(client) == 1


async def test_without_a_before_spawn_hook_a_slot_costs_one_statement(client: dt.Durable) -> None:
    def no_transaction(*args: Any) -> Any:
        raise AssertionError("a pass without a hook takes no lock of its own")

    info = await client.schedule("s", "elsewhere", None, cron="@hourly")
    assert info.next_fire_at is not None
    await advance_clock(client, info.next_fire_at - info.created_at + timedelta(seconds=1))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Store, "_fire_stamped", no_transaction)
        patch.setattr(_schedules, "_stamp", no_transaction)
        assert await fire_schedules(client) == 1


async def test_opentelemetry_gives_each_slot_its_own_trace_and_count(
    pg_url: str, schema: str
) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    hooks = otel_hooks(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    async with dt.Durable.connect(pg_url, schema=schema, hooks=hooks) as client:
        client.register(tick)
        info = await client.schedule("minutely", tick, None, cron="* * * * *")
        await client.schedule("minutely", tick, None, cron="* * * * *")  # declared again
        assert SPAWNED_AT not in info.headers
        assert "traceparent" not in info.headers
        await trio.sleep(1.5)  # between the declaration and the slots
        for _ in range(3):
            await advance_clock(client, 60)
            assert await fire_schedules(client) == 1
            await run_until_idle(client)

    spans = exporter.get_finished_spans()
    runs = [s for s in spans if s.name == "run tick"]
    assert len(runs) == 3
    assert len({s.context.trace_id for s in runs}) == 3
    assert sum(s.name == "spawn tick" for s in spans) == 3
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        m.name: list(m.data.data_points)
        for r in data.resource_metrics
        for sc in r.scope_metrics
        for m in sc.metrics
    }
    assert sum(p.value for p in points["durable_trio.tasks.spawned"]) == 3
    [latency] = points["durable_trio.tasks.start_latency"]
    assert latency.count == 3
    assert latency.sum / latency.count < 1.0  # from the firing, not the declaration
