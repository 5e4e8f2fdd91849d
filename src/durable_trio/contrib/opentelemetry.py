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
  queue; a suspension (sleep, wait, join) ends it with the event ``suspended`` and a child
  span ``suspend`` naming the checkpoint waited on, a failure records the exception and an
  error status (and ``durable_trio.retried`` when another attempt follows);
- a span ``step <name>`` per step; a replayed step is marked ``durable_trio.replayed`` and
  lasts no time (nothing ran);
- a span ``emit`` (PRODUCER) per event emitted, and ``cancel`` per client cancel;
- the counters, histograms and in-flight up-down counter listed in docs/observability.md.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio
from opentelemetry import metrics, propagate, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

import durable_trio as dt

from .._core.retry import decide_failure
from .._errors import LeaseLost
from .._run import RunState, Suspended, Write

__all__ = ["otel_hooks"]

SPAWNED_AT = "durable_trio.spawned_at"
_CARRIED = ("traceparent", "tracestate")
# Checkpoint writes queued and not yet durable, measured once they are: a bound, so that
# writes never finished (a worker stopped meanwhile) cannot pile up.
_PENDING_WRITES = 4096


def otel_hooks(
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> dt.Hooks:
    """Hooks that trace and measure spawns, attempts, steps, emits and cancels (the global
    providers unless others are given)."""
    return _Telemetry(tracer_provider, meter_provider).hooks()


class _Telemetry:
    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
    ) -> None:
        self.tracer = trace.get_tracer("durable_trio", tracer_provider=tracer_provider)
        meter = metrics.get_meter("durable_trio", meter_provider=meter_provider)
        # Counters are kept as plain ints and read when metrics are collected (asynchronous
        # instruments): a synchronous SDK counter costs ~10 µs a call, several per task.
        self.spawned = _tally(meter, "durable_trio.tasks.spawned")
        self.cancelled = _tally(meter, "durable_trio.tasks.cancelled")
        self.emitted = _tally(meter, "durable_trio.events.emitted")
        self.counters = {
            outcome: _tally(meter, f"durable_trio.runs.{outcome}")
            for outcome in ("started", "completed", "failed", "retried", "suspended")
        }
        self.in_flight = _Tally()
        meter.create_observable_up_down_counter(
            "durable_trio.runs.in_flight", callbacks=[self.in_flight.observe]
        )
        self.run_duration = meter.create_histogram("durable_trio.runs.duration", unit="s")
        self.start_latency = meter.create_histogram("durable_trio.tasks.start_latency", unit="s")
        self.step_duration = meter.create_histogram("durable_trio.steps.duration", unit="s")
        self.write_duration = meter.create_histogram(
            "durable_trio.checkpoints.write_duration", unit="s"
        )
        self.pending: deque[tuple[Write, dict[str, str]]] = deque(maxlen=_PENDING_WRITES)

    def hooks(self) -> dt.Hooks:
        return dt.Hooks(
            before_spawn=self.before_spawn,
            around_run=self.around_run,
            around_step=self.around_step,
            before_emit=self.before_emit,
            before_cancel=self.before_cancel,
        )

    # -- the spawning side ------------------------------------------------------------

    def before_spawn(self, call: dt.SpawnCall) -> dict[str, Any]:
        labels = (("task_name", call.task_name), ("queue", call.queue))
        with self.tracer.start_as_current_span(
            f"spawn {call.task_name}", kind=SpanKind.PRODUCER, attributes=_attributes(labels)
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
        self.spawned.add(labels)
        headers: dict[str, Any] = {key: carrier[key] for key in _CARRIED if key in carrier}
        headers[SPAWNED_AT] = time.time()
        return headers

    def before_emit(self, call: dt.EmitCall) -> None:
        # Event names often carry an id (``paid-<order>``): an attribute, not a span name
        # or a metric label, to keep both of low cardinality.
        attributes: dict[str, AttributeValue] = {
            "durable_trio.event": call.name,
            "durable_trio.queue": call.queue,
        }
        if call.task_id is not None:
            attributes["durable_trio.task_id"] = str(call.task_id)
        self.tracer.start_span("emit", kind=SpanKind.PRODUCER, attributes=attributes).end()
        self.emitted.add((("queue", call.queue),))

    def before_cancel(self, call: dt.CancelCall) -> None:
        attributes = {"durable_trio.task_id": str(call.task_id)}
        self.tracer.start_span("cancel", attributes=attributes).end()
        self.cancelled.add(())

    # -- the worker side --------------------------------------------------------------

    @asynccontextmanager
    async def around_run(self, ctx: dt.TaskContext) -> AsyncIterator[None]:
        self.record_writes()
        run: RunState = ctx._run
        labels = (("task_name", ctx.task_name), ("queue", ctx.queue))
        tags = dict(labels)
        attributes: dict[str, AttributeValue] = {
            **_attributes(labels),
            "durable_trio.task_id": str(ctx.task_id),
            "durable_trio.run_id": str(ctx.run_id),
            "durable_trio.attempt": ctx.attempt,
        }
        parent = propagate.extract({k: str(v) for k, v in ctx.headers.items() if k in _CARRIED})
        spawned_at = ctx.headers.get(SPAWNED_AT)
        if ctx.attempt == 1 and not ctx.resumed and isinstance(spawned_at, (int, float)):
            self.start_latency.record(max(0.0, time.time() - spawned_at), tags)
        self.counters["started"].add(labels)
        worker = (*labels, ("worker_id", run.worker_id))
        self.in_flight.add(worker)
        started = time.monotonic()
        with self.tracer.start_as_current_span(
            f"run {ctx.task_name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            outcomes = ["completed"]
            try:
                yield
            except BaseException as ex:
                outcomes = self.ended(span, run, ex)
                raise
            finally:
                self.in_flight.add(worker, -1)
                self.run_duration.record(time.monotonic() - started, tags)
                for outcome in outcomes:
                    if outcome in self.counters:
                        self.counters[outcome].add(labels)

    def ended(self, span: Span, run: RunState, ex: BaseException) -> list[str]:
        """How an attempt that raised ended, as the worker will see it (the same order:
        a cancellation wins over a suspension or a lost lease, which win over an error)."""
        if _holds(ex, trio.Cancelled):
            span.add_event("cancelled")  # the task cancelled, or the worker stopping
            return ["cancelled"]
        suspended = _first(ex, Suspended)
        if suspended is not None:
            span.add_event("suspended")
            checkpoint = {"durable_trio.checkpoint": suspended.checkpoint}
            self.tracer.start_span("suspend", attributes=checkpoint).end()
            return ["suspended"]
        if _holds(ex, LeaseLost):
            span.add_event("lost")  # another worker or a cancel took the run: not a failure
            return ["lost"]
        span.record_exception(ex)
        span.set_status(Status(StatusCode.ERROR, type(ex).__name__))
        retry = run.retryable(ex) and _attempts_left(run)
        span.set_attribute("durable_trio.retried", retry)
        return ["failed", "retried"] if retry else ["failed"]

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
            write = ctx._run.last_write
            if write is not None and write.name == call.checkpoint:
                self.pending.append((write, {"task_name": ctx.task_name}))
        self.record_writes()

    def record_writes(self) -> None:
        """Measure the checkpoint writes that became durable since the last call. The
        writer commits in the order writes were queued, so the oldest is done first."""
        while self.pending and self.pending[0][0].done.is_set():
            write, labels = self.pending.popleft()
            if write.owned and write.written is not None:
                self.write_duration.record(write.written - write.queued, labels)


def _attempts_left(run: RunState) -> bool:
    """Whether the worker's decision for a retryable failure will be another attempt."""
    return decide_failure(
        attempt=run.attempt,
        max_attempts=run.max_attempts,
        retryable=True,
        strategy=run.retry,
        rand=0.0,
    ).retry


def _first(ex: BaseException, kind: type[Suspended]) -> Suspended | None:
    if isinstance(ex, kind):
        return ex
    if isinstance(ex, BaseExceptionGroup):
        group = ex.subgroup(kind)
        if group is not None:
            found = _first(group.exceptions[0], kind)
            return found
    return None


def _holds(ex: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(ex, BaseExceptionGroup):
        return ex.subgroup(kind) is not None
    return isinstance(ex, kind)


Labels = tuple[tuple[str, str], ...]


class _Tally:
    """Totals by label set, reported when metrics are collected. Locked: spawns may come
    from several threads (the blocking client), collection from the reader's thread."""

    def __init__(self) -> None:
        self.totals: dict[Labels, int] = {}
        self.lock = threading.Lock()

    def add(self, labels: Labels, amount: int = 1) -> None:
        with self.lock:
            self.totals[labels] = self.totals.get(labels, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self.lock:
            totals = list(self.totals.items())
        return [Observation(total, dict(labels)) for labels, total in totals]


def _tally(meter: metrics.Meter, name: str) -> _Tally:
    tally = _Tally()
    meter.create_observable_counter(name, callbacks=[tally.observe])
    return tally


def _attributes(labels: Labels) -> dict[str, str]:
    return {f"durable_trio.{key}": value for key, value in labels}
