"""CPU cost of durable_trio.contrib.opentelemetry's worker-side hooks, per task: one
attempt through ``around_run`` with one step through ``around_step`` inside it, driven
without an event loop (the hooks never wait), on a stand-in TaskContext.

    PYTHONPATH=src python benchmarks/otel_micro.py [--n 20000]

Rows: the SDK recording every span (batched to an exporter that drops them, metrics to an
in-memory reader), the SDK sampling 10% of traces (ParentBased(TraceIdRatioBased)),
step spans off, and the no-op API providers; and, for scale, the SDK's own cost of
starting and ending one span (with and without attributes, and left out by the
sampler), of one trace context extraction, of recording one histogram value, and of
the SDK calls alone that one one-step task's telemetry needs (its floor: no hook code).
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from types import SimpleNamespace
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

import durable_trio as dt
from durable_trio.contrib.opentelemetry import SPAWNED_AT, otel_hooks

# What a `run` span carries.
RUN_ATTRIBUTES: dict[str, Any] = {
    "durable_trio.task_name": "one_step",
    "durable_trio.queue": "default",
    "durable_trio.task_id": str(uuid.uuid4()),
    "durable_trio.run_id": str(uuid.uuid4()),
    "durable_trio.attempt": 1,
}


def _ctx(tracer: trace.Tracer) -> Any:
    """A stand-in for what the hooks read of a TaskContext, spawned under a span."""
    carrier: dict[str, str] = {}
    with tracer.start_as_current_span("spawn"):
        propagate.inject(carrier)
    run = SimpleNamespace(worker_id="w1", last_write=None, attempt=1, max_attempts=3, retry=None)
    return SimpleNamespace(
        task_name="one_step",
        queue="default",
        task_id=uuid.uuid4(),
        run_id=uuid.uuid4(),
        attempt=1,
        resumed=False,
        headers={**carrier, SPAWNED_AT: time.time()},
        _run=run,
    )


def _drive(coro: Coroutine[Any, Any, Any]) -> None:
    try:
        while True:
            coro.send(None)
    except StopIteration:
        pass


def _one_task(hooks: dt.Hooks, ctx: Any) -> Callable[[], None]:
    around_run, around_step = hooks.around_run, hooks.around_step
    assert around_run is not None
    assert around_step is not None

    async def task() -> None:
        async with around_run(ctx), around_step(ctx, dt.StepCall("work", "work", False)):
            pass

    return lambda: _drive(task())


def _per_call_us(fn: Callable[[], object], n: int, repeat: int = 5) -> float:
    best = []
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(n):
            fn()
        best.append((time.process_time() - start) / n * 1e6)
    best.sort()
    return best[len(best) // 2]


class _Discard(SpanExporter):
    """Exports to nowhere, as a network exporter leaves nothing behind in the process (an
    in-memory exporter keeping every span would make the collector's passes, and so each
    measurement, slower as the run goes on)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _sdk(sampler: Any = None) -> tuple[TracerProvider, MeterProvider]:
    tracing = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
    tracing.add_span_processor(BatchSpanProcessor(_Discard()))
    return tracing, MeterProvider(metric_readers=[InMemoryMetricReader()])


def _floor(tracer: trace.Tracer, histogram: metrics.Histogram) -> Callable[[], None]:
    """The SDK calls the telemetry of one one-step task cannot do without, and nothing
    else: its trace context extracted, the attempt's span (five attributes) and the step's
    (four), and three histogram values (start latency, run, checkpoint write)."""
    carrier = {key: str(value) for key, value in _ctx(tracer).headers.items()}
    step_attributes: dict[str, Any] = {
        "durable_trio.task_name": "one_step",
        "durable_trio.step": "work",
        "durable_trio.checkpoint": "work",
        "durable_trio.replayed": False,
    }
    tags = {"task_name": "one_step", "queue": "default"}

    def task() -> None:
        parent = propagate.extract(carrier)
        run = tracer.start_span("run one_step", context=parent, attributes=RUN_ATTRIBUTES)
        step = tracer.start_span(
            "step work", context=trace.set_span_in_context(run), attributes=step_attributes
        )
        step.end()
        run.end()
        for _ in range(3):
            histogram.record(0.001, tags)

    return task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    n = parser.parse_args().n
    rows: list[tuple[str, float]] = []
    for label, sampler, options in (
        ("SDK, every span", None, {}),
        ("SDK, 10% sampled", ParentBased(TraceIdRatioBased(0.1)), {}),
        ("SDK, step_spans=False", None, {"step_spans": False}),
    ):
        tracing, meters = _sdk(sampler)
        try:
            hooks = otel_hooks(tracer_provider=tracing, meter_provider=meters, **options)
        except TypeError:
            continue  # an option this version does not have
        ctx = _ctx(tracing.get_tracer("bench"))
        rows.append((label, _per_call_us(_one_task(hooks, ctx), n)))
        tracing.shutdown()
    noop = otel_hooks(
        tracer_provider=trace.NoOpTracerProvider(), meter_provider=metrics.NoOpMeterProvider()
    )
    rows.append(("no-op providers", _per_call_us(_one_task(noop, _ctx(trace.NoOpTracer())), n)))
    tracing, meters = _sdk()
    tracer = tracing.get_tracer("bench")
    rows.append(("SDK: one span start+end", _per_call_us(lambda: tracer.start_span("s").end(), n)))
    rows.append(
        (
            "SDK: same, 5 attributes",
            _per_call_us(lambda: tracer.start_span("s", attributes=RUN_ATTRIBUTES).end(), n),
        )
    )
    carrier = {key: str(value) for key, value in _ctx(tracer).headers.items()}
    rows.append(("API: one propagate.extract", _per_call_us(lambda: propagate.extract(carrier), n)))
    sampled_out, _ = _sdk(ParentBased(TraceIdRatioBased(0.0)))
    unsampled = sampled_out.get_tracer("bench")
    rows.append(
        ("SDK: one span, sampled out", _per_call_us(lambda: unsampled.start_span("s").end(), n))
    )
    sampled_out.shutdown()
    histogram = meters.get_meter("bench").create_histogram("h")
    tags = {"task_name": "one_step"}
    rows.append(("SDK: one histogram record", _per_call_us(lambda: histogram.record(1.0, tags), n)))
    rows.append(("SDK floor, one one-step task", _per_call_us(_floor(tracer, histogram), n)))
    tracing.shutdown()
    for label, us in rows:
        print(f"{label:<28} {us:8.1f} µs")


if __name__ == "__main__":
    main()
