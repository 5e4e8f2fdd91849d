"""durable_trio.contrib.opentelemetry with the SDK's in-memory exporters, across a real
spawn → worker → step → child task chain: one trace, the right parents, the metrics;
emits, retries, cancels, suspensions and the in-flight count."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import durable_trio as dt
from durable_trio.contrib.opentelemetry import otel_hooks
from durable_trio.testing import run_until_idle


@dt.task("weigh")
async def weigh(ctx: dt.TaskContext, p: None) -> int:
    return await ctx.step("scale", lambda: 3)


@dt.task("ship")
async def ship(ctx: dt.TaskContext, p: None) -> int:
    await ctx.step("pack", lambda: "boxed")
    child = await ctx.spawn("weigh", weigh, None)
    return await ctx.join("weighed", child)


@dt.task("doomed")
async def doomed(ctx: dt.TaskContext, p: None) -> None:
    raise dt.NonRetryable("no stock")


@dt.task("flaky", options=dt.SpawnOptions(max_attempts=3, retry=dt.RetryStrategy.none()))
async def flaky(ctx: dt.TaskContext, p: None) -> str:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    await ctx.step("pack", lambda: 1)
    return await ctx.step("deliver", lambda: "ok")  # waits for pack's checkpoint first


@dt.task("announce")
async def announce(ctx: dt.TaskContext, p: None) -> str:
    child = await ctx.spawn("paid", listen, None)
    await ctx.emit_event("paid", {"order": 7})
    return await ctx.join("heard", child)


@dt.task("listen")
async def listen(ctx: dt.TaskContext, p: None) -> str:
    await ctx.await_event("paid")
    return "heard"


@dt.task("napper")
async def napper(ctx: dt.TaskContext, p: None) -> None:
    await ctx.sleep_for("nap", 3600)


@pytest.fixture
def telemetry() -> tuple[InMemorySpanExporter, InMemoryMetricReader, dt.Hooks]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    hooks = otel_hooks(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    return spans, reader, hooks


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = list(metric.data.data_points)
    return found


async def test_one_trace_runs_spawner_task_step_child(
    pg_url: str,
    schema: str,
    telemetry: tuple[InMemorySpanExporter, InMemoryMetricReader, dt.Hooks],
) -> None:
    exporter, reader, hooks = telemetry
    tracer = hooks_tracer(hooks)
    async with dt.Durable.connect(pg_url, schema=schema, hooks=hooks) as client:
        client.register(ship, weigh, doomed)
        with tracer.start_as_current_span("POST /orders"):
            spawned = await client.spawn(ship, None)
        failing = await client.spawn(doomed, None)
        await run_until_idle(client)
        assert await client.wait_result(spawned) == 3
        with pytest.raises(dt.TaskFailed):
            await client.wait_result(failing)

    spans = {s.name: s for s in exporter.get_finished_spans() if "doomed" not in s.name}
    by_id = {s.context.span_id: s for s in exporter.get_finished_spans()}

    def parent(span: ReadableSpan) -> str:
        assert span.parent is not None, span.name
        return by_id[span.parent.span_id].name

    request = spans["POST /orders"]
    assert all(s.context.trace_id == request.context.trace_id for s in spans.values())
    assert parent(spans["spawn ship"]) == "POST /orders"
    runs = [s for s in exporter.get_finished_spans() if s.name == "run ship"]
    assert [r.attributes["durable_trio.attempt"] for r in runs] == [1, 1]  # suspended, resumed
    assert all(parent(r) == "spawn ship" for r in runs)
    assert [e.name for e in runs[0].events] == ["suspended"]  # waiting for the child
    assert parent(spans["step pack"]) == "run ship"
    assert parent(spans["spawn weigh"]) == "run ship"
    assert parent(spans["run weigh"]) == "spawn weigh"
    assert parent(spans["step scale"]) == "run weigh"
    replayed = [s for s in exporter.get_finished_spans() if s.name == "step pack"]
    assert [s.attributes["durable_trio.replayed"] for s in replayed] == [False, True]
    [failed] = [s for s in exporter.get_finished_spans() if s.name == "run doomed"]
    assert failed.status.status_code.name == "ERROR"
    assert [e.name for e in failed.events] == ["exception"]

    points = metric_points(reader)
    spawned_total = sum(p.value for p in points["durable_trio.tasks.spawned"])
    assert spawned_total == 3  # ship, doomed, and the child
    completed = {p.attributes["task_name"]: p.value for p in points["durable_trio.runs.completed"]}
    assert completed == {"ship": 1, "weigh": 1}
    assert sum(p.value for p in points["durable_trio.runs.failed"]) == 1
    assert sum(p.value for p in points["durable_trio.runs.suspended"]) == 1
    assert sum(p.value for p in points["durable_trio.runs.in_flight"]) == 0
    assert sum(p.count for p in points["durable_trio.tasks.start_latency"]) == 3


def hooks_tracer(hooks: dt.Hooks) -> Any:
    """The tracer the hooks were built with (a test's spawner uses the same provider)."""
    bound = hooks.before_spawn
    return bound.__self__.tracer  # type: ignore[union-attr]


def total(points: dict[str, list[Any]], name: str) -> float:
    return sum(p.value for p in points.get(name, []))


async def test_emits_retries_cancels_and_suspensions(
    pg_url: str,
    schema: str,
    telemetry: tuple[InMemorySpanExporter, InMemoryMetricReader, dt.Hooks],
) -> None:
    exporter, reader, hooks = telemetry
    tracer = hooks_tracer(hooks)
    async with dt.Durable.connect(pg_url, schema=schema, hooks=hooks) as client:
        client.register(flaky, announce, listen, napper)
        retried = await client.spawn(flaky, None)
        with tracer.start_as_current_span("POST /announce"):
            announced = await client.spawn(announce, None)
        sleeper = await client.spawn(napper, None)
        await run_until_idle(client)
        assert await client.wait_result(retried) == "ok"
        assert await client.wait_result(announced) == "heard"
        with tracer.start_as_current_span("DELETE /nap"):
            assert await client.cancel(sleeper.task_id)
        with pytest.raises(dt.TaskCancelled):
            await client.wait_result(sleeper)

    finished = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished}

    def named(name: str) -> list[ReadableSpan]:
        return [s for s in finished if s.name == name]

    def parent(span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, span.name
        return by_id[span.parent.span_id]

    [emit] = named("emit")  # the announce task's replay emits nothing again
    assert parent(emit).name == "run announce"
    assert emit.kind.name == "PRODUCER"
    assert emit.attributes is not None
    assert emit.attributes["durable_trio.event"] == "paid"
    assert emit.context.trace_id == named("POST /announce")[0].context.trace_id

    flaky_runs = named("run flaky")
    assert [r.attributes["durable_trio.attempt"] for r in flaky_runs] == [1, 2]  # type: ignore[index]
    assert flaky_runs[0].attributes["durable_trio.retried"] is True  # type: ignore[index]
    assert flaky_runs[0].status.status_code.name == "ERROR"
    assert flaky_runs[1].status.status_code.name == "UNSET"

    suspends = named("suspend")
    # The child runs in a later pass than its parent's emit: its wait returns at once.
    assert sorted(parent(s).name for s in suspends) == ["run announce", "run napper"]
    [nap] = [s for s in suspends if parent(s).name == "run napper"]
    assert nap.attributes is not None
    assert "nap" in str(nap.attributes["durable_trio.checkpoint"])
    [cancel] = named("cancel")
    assert parent(cancel).name == "DELETE /nap"

    points = metric_points(reader)
    assert total(points, "durable_trio.runs.retried") == 1
    assert total(points, "durable_trio.runs.failed") == 1
    assert total(points, "durable_trio.tasks.cancelled") == 1
    assert total(points, "durable_trio.events.emitted") == 1
    assert total(points, "durable_trio.runs.suspended") == 2
    in_flight = points["durable_trio.runs.in_flight"]
    assert all(p.attributes["worker_id"] for p in in_flight)
    assert sum(p.value for p in in_flight) == 0
    # Measured when the worker next calls a hook after the write is durable: pack's by the
    # end of deliver, whose own checkpoint is written with the completion, later.
    writes = points["durable_trio.checkpoints.write_duration"]
    assert sum(p.count for p in writes) >= 1


async def test_client_emits_and_the_in_flight_count_while_running(
    pg_url: str,
    schema: str,
    telemetry: tuple[InMemorySpanExporter, InMemoryMetricReader, dt.Hooks],
) -> None:
    exporter, reader, hooks = telemetry
    seen: list[float] = []

    @dt.task("count")
    async def count(ctx: dt.TaskContext, p: None) -> None:
        points = metric_points(reader)["durable_trio.runs.in_flight"]
        seen.append(sum(p.value for p in points if p.attributes["task_name"] == "count"))

    async with dt.Durable.connect(pg_url, schema=schema, hooks=hooks) as client:
        client.register(count)
        await client.spawn(count, None)
        await run_until_idle(client)
        assert await client.emit_event("shipped", queue="elsewhere") == 0

    assert seen == [1]
    [emit] = [s for s in exporter.get_finished_spans() if s.name == "emit"]
    assert emit.parent is None  # no span was current where the client emitted
    assert emit.attributes is not None
    assert emit.attributes["durable_trio.queue"] == "elsewhere"
    points = metric_points(reader)
    assert {p.attributes["queue"]: p.value for p in points["durable_trio.events.emitted"]} == {
        "elsewhere": 1
    }
    assert total(points, "durable_trio.runs.in_flight") == 0
