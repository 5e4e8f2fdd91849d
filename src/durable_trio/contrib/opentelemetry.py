"""OpenTelemetry traces and metrics for durable_trio (``pip install 'durable_trio[otel]'``).

    from durable_trio.contrib.opentelemetry import otel_hooks
    async with dt.Durable.connect(url, hooks=otel_hooks()) as client: ...

Built on `durable_trio.Hooks`, so it sees what they see:

- a span ``spawn <task>`` (PRODUCER) for each spawn, child of whatever span is current
  where the spawn is made (a request handler, a task's run), whose W3C trace context is
  stored in the task's headers (``traceparent``, ``tracestate``): the task's spans are its
  children even in another process, and a child task's spawn span is a child of its
  parent's run, so one trace runs spawner → task → step → child task;
- a span ``run <task>`` (CONSUMER) per attempt, with the task's id, run id, attempt and
  queue; a suspension (sleep, wait, join) ends it with the event ``suspended``, a failure
  records the exception and an error status;
- a span ``step <name>`` per step; a replayed step is marked ``durable_trio.replayed`` and
  lasts no time (nothing ran);
- metrics: counters ``durable_trio.tasks.spawned``, ``durable_trio.runs.started``,
  ``.completed``, ``.failed``, ``.suspended``; histograms ``durable_trio.runs.duration``
  (s), ``durable_trio.tasks.start_latency`` (s, spawn to first attempt, from the wall
  clocks of the spawner and the worker) and ``durable_trio.steps.duration`` (s, first
  runs only); an up-down counter ``durable_trio.runs.in_flight``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

import durable_trio as dt

from .._context import Suspended

__all__ = ["otel_hooks"]

SPAWNED_AT = "durable_trio.spawned_at"
_CARRIED = ("traceparent", "tracestate")


def otel_hooks(
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> dt.Hooks:
    """Hooks that trace and measure spawns, attempts and steps (the global providers
    unless others are given)."""
    return _Telemetry(tracer_provider, meter_provider).hooks()


class _Telemetry:
    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
    ) -> None:
        self.tracer = trace.get_tracer("durable_trio", tracer_provider=tracer_provider)
        meter = metrics.get_meter("durable_trio", meter_provider=meter_provider)
        self.spawned = meter.create_counter("durable_trio.tasks.spawned")
        self.counters = {
            outcome: meter.create_counter(f"durable_trio.runs.{outcome}")
            for outcome in ("started", "completed", "failed", "suspended")
        }
        self.in_flight = meter.create_up_down_counter("durable_trio.runs.in_flight")
        self.run_duration = meter.create_histogram("durable_trio.runs.duration", unit="s")
        self.start_latency = meter.create_histogram("durable_trio.tasks.start_latency", unit="s")
        self.step_duration = meter.create_histogram("durable_trio.steps.duration", unit="s")

    def hooks(self) -> dt.Hooks:
        return dt.Hooks(
            before_spawn=self.before_spawn, around_run=self.around_run, around_step=self.around_step
        )

    def before_spawn(self, call: dt.SpawnCall) -> dict[str, Any]:
        labels = {"task_name": call.task_name, "queue": call.queue}
        with self.tracer.start_as_current_span(
            f"spawn {call.task_name}", kind=SpanKind.PRODUCER, attributes=_attributes(labels)
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
        self.spawned.add(1, labels)
        headers: dict[str, Any] = {key: carrier[key] for key in _CARRIED if key in carrier}
        headers[SPAWNED_AT] = time.time()
        return headers

    @asynccontextmanager
    async def around_run(self, ctx: dt.TaskContext) -> AsyncIterator[None]:
        labels = {"task_name": ctx.task_name, "queue": ctx.queue}
        attributes: dict[str, AttributeValue] = {
            **_attributes(labels),
            "durable_trio.task_id": str(ctx.task_id),
            "durable_trio.run_id": str(ctx.run_id),
            "durable_trio.attempt": ctx.attempt,
        }
        parent = propagate.extract({k: str(v) for k, v in ctx.headers.items() if k in _CARRIED})
        spawned_at = ctx.headers.get(SPAWNED_AT)
        if ctx.attempt == 1 and not ctx.resumed and isinstance(spawned_at, (int, float)):
            self.start_latency.record(max(0.0, time.time() - spawned_at), labels)
        self.counters["started"].add(1, labels)
        self.in_flight.add(1, labels)
        started = time.monotonic()
        with self.tracer.start_as_current_span(
            f"run {ctx.task_name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            outcome = "failed"
            try:
                yield
                outcome = "completed"
            except Suspended:
                outcome = "suspended"
                span.add_event("suspended")
                raise
            except trio.Cancelled:
                outcome = "cancelled"
                span.add_event("cancelled")
                raise
            except Exception as ex:
                span.record_exception(ex)
                span.set_status(Status(StatusCode.ERROR, type(ex).__name__))
                raise
            finally:
                self.in_flight.add(-1, labels)
                self.run_duration.record(time.monotonic() - started, labels)
                if outcome in self.counters:
                    self.counters[outcome].add(1, labels)

    @asynccontextmanager
    async def around_step(self, ctx: dt.TaskContext, call: dt.StepCall) -> AsyncIterator[None]:
        attributes: dict[str, AttributeValue] = {
            "durable_trio.task_name": ctx.task_name,
            "durable_trio.step": call.name,
            "durable_trio.checkpoint": call.checkpoint,
            "durable_trio.replayed": call.replayed,
        }
        started = time.monotonic()
        with self.tracer.start_as_current_span(f"step {call.name}", attributes=attributes):
            yield
        if not call.replayed:
            labels = {"task_name": ctx.task_name, "step": call.name}
            self.step_duration.record(time.monotonic() - started, labels)


def _attributes(labels: dict[str, str]) -> dict[str, str]:
    return {f"durable_trio.{key}": value for key, value in labels.items()}
