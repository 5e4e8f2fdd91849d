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
- a span ``step <name>`` per step of a recorded run (none in a trace the sampler left
  out, nor with ``step_spans=False``); a replayed step is marked
  ``durable_trio.replayed`` and lasts no time (nothing ran);
- a span ``emit`` (PRODUCER) per event emitted, and ``cancel`` per client cancel;
- the counters, histograms and in-flight up-down counter listed in docs/observability.md.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import trio
from opentelemetry import context as otel_context
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
    step_spans: bool = True,
    histograms: bool = True,
) -> dt.Hooks:
    """Hooks that trace and measure spawns, attempts, steps, emits and cancels (the global
    providers unless others are given).

    What costs CPU in a busy worker is the spans and the histograms (see
    docs/observability.md): ``step_spans=False`` leaves out the ``step`` spans (runs,
    spawns, emits, cancels and suspensions keep theirs), ``histograms=False`` the four
    histograms (the counters and the in-flight count stay: they cost next to nothing).
    A sampler on the tracer provider (``ParentBased(TraceIdRatioBased(...))``) makes
    the spans of unsampled traces cheap while every metric stays exact.
    """
    return _Telemetry(
        tracer_provider, meter_provider, step_spans=step_spans, histograms=histograms
    ).hooks()


class _Telemetry:
    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
        *,
        step_spans: bool = True,
        histograms: bool = True,
    ) -> None:
        self.step_spans = step_spans
        self.histograms = histograms
        self.kinds: dict[tuple[str, str], _Kind] = {}
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
        kind = self.kind(call.task_name, call.queue)
        span = self.tracer.start_span(
            f"spawn {call.task_name}", kind=SpanKind.PRODUCER, attributes=kind.attributes
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        span.end()
        self.spawned.add(kind.labels)
        headers: dict[str, Any] = {key: carrier[key] for key in _CARRIED if key in carrier}
        headers[SPAWNED_AT] = time.time()
        return headers

    def before_emit(self, call: dt.EmitCall) -> None:
        # Event names often carry an id (``paid-<order>``): an attribute, not a span name
        # or a metric label, to keep both of low cardinality.
        span = self.tracer.start_span("emit", kind=SpanKind.PRODUCER)
        if span.is_recording():
            attributes: dict[str, AttributeValue] = {
                "durable_trio.event": call.name,
                "durable_trio.queue": call.queue,
            }
            if call.task_id is not None:
                attributes["durable_trio.task_id"] = str(call.task_id)
            span.set_attributes(attributes)
        span.end()
        self.emitted.add((("queue", call.queue),))

    def before_cancel(self, call: dt.CancelCall) -> None:
        attributes = {"durable_trio.task_id": str(call.task_id)}
        self.tracer.start_span("cancel", attributes=attributes).end()
        self.cancelled.add(())

    # -- the worker side --------------------------------------------------------------
    # Class-based context managers, what each task's kind needs computed once (`_Kind`),
    # and attributes set only on spans that record: the hooks run for every attempt and
    # step, and a generator-based context manager or a rebuilt dict costs more than the
    # span of a sampled-out trace.

    def around_run(self, ctx: dt.TaskContext) -> _RunSpan:
        return _RunSpan(self, ctx)

    def around_step(
        self, ctx: dt.TaskContext, call: dt.StepCall
    ) -> _StepSpan | _StepTimer | _Nothing:
        if self.step_spans and trace.get_current_span().is_recording():
            return _StepSpan(self, ctx, call)
        if self.histograms:
            return _StepTimer(self, ctx, call)
        return _NOTHING

    def kind(self, task_name: str, queue: str) -> _Kind:
        kind = self.kinds.get((task_name, queue))
        if kind is None:
            kind = self.kinds[(task_name, queue)] = _Kind(task_name, queue)
        return kind

    def ended(self, span: Span, run: RunState, ex: BaseException) -> tuple[str, ...]:
        """How an attempt that raised ended, as the worker will see it (the same order:
        a cancellation wins over a suspension or a lost lease, which win over an error)."""
        if _holds(ex, trio.Cancelled):
            span.add_event("cancelled")  # the task cancelled, or the worker stopping
            return ("cancelled",)
        suspended = _first(ex, Suspended)
        if suspended is not None:
            span.add_event("suspended")
            checkpoint = {"durable_trio.checkpoint": suspended.checkpoint}
            self.tracer.start_span("suspend", attributes=checkpoint).end()
            return ("suspended",)
        if _holds(ex, LeaseLost):
            span.add_event("lost")  # another worker or a cancel took the run: not a failure
            return ("lost",)
        span.record_exception(ex)
        span.set_status(Status(StatusCode.ERROR, type(ex).__name__))
        retry = run.retryable(ex) and _attempts_left(run)
        span.set_attribute("durable_trio.retried", retry)
        return ("failed", "retried") if retry else ("failed",)

    def step_ended(self, ctx: dt.TaskContext, call: dt.StepCall, started: float) -> None:
        if not call.replayed and self.histograms:
            kind = self.kind(ctx.task_name, ctx.queue)
            self.step_duration.record(time.monotonic() - started, kind.step_tags(call.name))
            write = ctx._run.last_write
            if write is not None and write.name == call.checkpoint:
                self.pending.append((write, kind.task_tags))
        if self.pending:
            self.record_writes()

    def record_writes(self) -> None:
        """Measure the checkpoint writes that became durable since the last call. The
        writer commits in the order writes were queued, so the oldest is done first."""
        while self.pending and self.pending[0][0].done.is_set():
            write, labels = self.pending.popleft()
            if write.owned and write.written is not None:
                self.write_duration.record(write.written - write.queued, labels)


class _Kind:
    """What the spans and metrics of one task name on one queue share, made once."""

    __slots__ = ("attributes", "labels", "run_name", "step_names", "tags", "task_tags")

    def __init__(self, task_name: str, queue: str) -> None:
        self.labels: Labels = (("task_name", task_name), ("queue", queue))
        self.tags = dict(self.labels)
        self.task_tags = {"task_name": task_name}
        self.attributes = _attributes(self.labels)
        self.run_name = f"run {task_name}"
        self.step_names: dict[str, tuple[str, dict[str, str]]] = {}

    def step(self, step: str) -> tuple[str, dict[str, str]]:
        """A step's span name and histogram labels."""
        found = self.step_names.get(step)
        if found is None:
            tags = {"task_name": self.task_tags["task_name"], "step": step}
            found = self.step_names[step] = (f"step {step}", tags)
        return found

    def step_tags(self, step: str) -> dict[str, str]:
        return self.step(step)[1]


class _RunSpan:
    """``around_run``: the run's span, current while the task's code runs (so that its
    steps, spawns and emits, and the user's own spans, are its children)."""

    __slots__ = ("ctx", "kind", "span", "started", "telemetry", "token", "worker")

    def __init__(self, telemetry: _Telemetry, ctx: dt.TaskContext) -> None:
        self.telemetry = telemetry
        self.ctx = ctx

    async def __aenter__(self) -> None:
        t, ctx = self.telemetry, self.ctx
        if t.pending:
            t.record_writes()
        kind = self.kind = t.kind(ctx.task_name, ctx.queue)
        headers = ctx.headers
        parent = None
        if "traceparent" in headers:
            parent = propagate.extract({k: str(headers[k]) for k in _CARRIED if k in headers})
        spawned_at = headers.get(SPAWNED_AT)
        if (
            t.histograms
            and ctx.attempt == 1
            and not ctx.resumed
            and isinstance(spawned_at, (int, float))
        ):
            t.start_latency.record(max(0.0, time.time() - spawned_at), kind.tags)
        t.counters["started"].add(kind.labels)
        self.worker = (*kind.labels, ("worker_id", ctx._run.worker_id))
        t.in_flight.add(self.worker)
        span = self.span = t.tracer.start_span(
            kind.run_name,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=kind.attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        if span.is_recording():
            span.set_attributes(
                {
                    "durable_trio.task_id": str(ctx.task_id),
                    "durable_trio.run_id": str(ctx.run_id),
                    "durable_trio.attempt": ctx.attempt,
                }
            )
        self.token = otel_context.attach(trace.set_span_in_context(span, parent))
        self.started = time.monotonic()

    async def __aexit__(
        self, kind: type[BaseException] | None, ex: BaseException | None, tb: TracebackType | None
    ) -> None:
        t, span = self.telemetry, self.span
        try:
            outcomes = ("completed",) if ex is None else t.ended(span, self.ctx._run, ex)
            t.in_flight.add(self.worker, -1)
            if t.histograms:
                t.run_duration.record(time.monotonic() - self.started, self.kind.tags)
            for outcome in outcomes:
                counter = t.counters.get(outcome)
                if counter is not None:
                    counter.add(self.kind.labels)
        finally:
            otel_context.detach(self.token)
            span.end()


class _Nothing:
    """``around_step`` with neither a span nor a histogram to make."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        pass

    async def __aexit__(self, *exc: object) -> None:
        pass


_NOTHING = _Nothing()


class _StepTimer:
    """``around_step`` without a span (step spans off, or the run's span not recorded:
    a sampled-out trace): the step's duration and checkpoint write only."""

    __slots__ = ("call", "ctx", "started", "telemetry")

    def __init__(self, telemetry: _Telemetry, ctx: dt.TaskContext, call: dt.StepCall) -> None:
        self.telemetry = telemetry
        self.ctx = ctx
        self.call = call

    async def __aenter__(self) -> None:
        self.started = time.monotonic()

    async def __aexit__(
        self, kind: type[BaseException] | None, ex: BaseException | None, tb: TracebackType | None
    ) -> None:
        if ex is None:
            self.telemetry.step_ended(self.ctx, self.call, self.started)


class _StepSpan:
    """``around_step`` with the step's span, current while the step runs."""

    __slots__ = ("call", "ctx", "span", "started", "telemetry", "token")

    def __init__(self, telemetry: _Telemetry, ctx: dt.TaskContext, call: dt.StepCall) -> None:
        self.telemetry = telemetry
        self.ctx = ctx
        self.call = call

    async def __aenter__(self) -> None:
        call, ctx = self.call, self.ctx
        name, _ = self.telemetry.kind(ctx.task_name, ctx.queue).step(call.name)
        # Made only inside a recorded run span: the step's is recorded too (with the
        # default, parent-based, samplers), so its attributes go in with it at once.
        attributes: dict[str, AttributeValue] = {
            "durable_trio.task_name": ctx.task_name,
            "durable_trio.step": call.name,
            "durable_trio.checkpoint": call.checkpoint,
            "durable_trio.replayed": call.replayed,
        }
        span = self.span = self.telemetry.tracer.start_span(name, attributes=attributes)
        self.token = otel_context.attach(trace.set_span_in_context(span))
        self.started = time.monotonic()

    async def __aexit__(
        self, kind: type[BaseException] | None, ex: BaseException | None, tb: TracebackType | None
    ) -> None:
        span = self.span
        try:
            if isinstance(ex, Exception) and span.is_recording():
                # What start_as_current_span does for a step that raised (an Exception:
                # a cancellation is not the step's error).
                span.record_exception(ex)
                span.set_status(Status(StatusCode.ERROR, f"{type(ex).__name__}: {ex}"))
        finally:
            otel_context.detach(self.token)
            span.end()
        if ex is None:
            self.telemetry.step_ended(self.ctx, self.call, self.started)


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
