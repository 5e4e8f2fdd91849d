"""A claimed run: what the worker, its writer and the TaskContext share about it, and
the exception that unwinds a task that suspended. A leaf: it imports none of them."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol, TypeVar
from uuid import UUID

import attrs
import trio

from ._core import lifecycle
from ._core.lifecycle import RunEvent, RunPhase
from ._core.retry import RetryStrategy
from ._db import TRANSIENT
from ._errors import DatabaseUnavailable, InvalidInput, LeaseLost, NonRetryable, ReplayMismatch
from ._hooks import NO_HOOKS, Hooks
from ._retrying import retrying
from ._rows import ClaimedRun
from ._store import Store
from ._task import TaskDefinition

__all__ = ["RunState", "RunWriter", "Suspended", "Write", "json_object", "retry_strategy"]

log = logging.getLogger("durable_trio.worker")
T = TypeVar("T")


class Suspended(BaseException):
    """Unwinds a task that suspended (its wait is already recorded). Never catch it.
    `checkpoint` names the sleep, wait or join (empty for a sibling's suspension)."""

    def __init__(self, checkpoint: str = "") -> None:
        super().__init__(checkpoint)
        self.checkpoint = checkpoint


@attrs.define(eq=False)
class Write:
    """A checkpoint (``name`` set) or a completion (``name`` None) of one run."""

    run: RunState
    name: str | None
    value: str
    done: trio.Event = attrs.field(factory=trio.Event)
    owned: bool = False  # set with `done`: written, because the worker still owned the run
    queued: float = attrs.field(factory=time.monotonic)
    written: float | None = None  # set with `done` (time.monotonic())


class RunWriter(Protocol):
    """The worker's writer, as a run and its context see it: it queues a checkpoint
    (``name`` set) or a completion (``name`` None) and commits them in batches."""

    def submit(self, run: RunState, name: str | None, value: str) -> Write: ...


@attrs.define(eq=False)
class RunState:
    """One claimed run, as the worker and the TaskContext see it."""

    run_id: UUID
    task_id: UUID
    attempt: int
    queue: str
    task_name: str
    params: Any
    headers: dict[str, Any]
    checkpoints: dict[str, Any]
    retry: RetryStrategy
    max_attempts: int
    claimed_at: datetime
    definition: TaskDefinition[Any, Any]
    store: Store
    writer: RunWriter
    worker_id: str
    claim_timeout: float
    prepare_spawn: Callable[..., dict[str, Any]]
    claimed_mono: float = attrs.field(factory=time.monotonic)
    lease_deadline: float = 0.0
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    # Where it is in its life on this worker (`_core.lifecycle`): the one truth about it.
    state: RunPhase = attrs.field(default=RunPhase.EXECUTING, init=False)
    _lost_reason: str = attrs.field(default="", init=False)  # once LOST: why
    # The latest step whose body raised, and what: `step_of` names it in the failure's log.
    _raised_in: tuple[str, BaseException] | None = attrs.field(default=None, init=False)
    last_write: Write | None = None  # the latest checkpoint or completion queued for it
    hooks: Hooks = NO_HOOKS
    gone: trio.Event = attrs.field(factory=trio.Event)  # set by `finish`: its execution ended

    @classmethod
    def from_claim(
        cls,
        row: ClaimedRun,
        *,
        queue: str,
        definition: TaskDefinition[Any, Any],
        store: Store,
        writer: RunWriter,
        worker_id: str,
        claim_timeout: float,
        prepare_spawn: Callable[..., dict[str, Any]],
        hooks: Hooks = NO_HOOKS,
    ) -> RunState:
        """A run as `Store.claim` returned it, leased for `claim_timeout` from now."""
        run = cls(
            run_id=row.run_id,
            task_id=row.task_id,
            attempt=row.attempt,
            queue=queue,
            task_name=row.task_name,
            params=row.params,
            headers=json_object(row.headers),
            checkpoints=json_object(row.checkpoints),
            retry=retry_strategy(row.retry),
            max_attempts=row.max_attempts,
            claimed_at=row.claimed_at,
            definition=definition,
            store=store,
            writer=writer,
            worker_id=worker_id,
            claim_timeout=claim_timeout,
            prepare_spawn=prepare_spawn,
            hooks=hooks,
        )
        run.lease_deadline = run.claimed_mono + claim_timeout
        return run

    def advance(self, event: RunEvent) -> RunPhase:
        """Apply `event` to the run's lifecycle (`IllegalRunTransition` if it may not
        happen now); returns the new state."""
        self.state = lifecycle.advance(self.state, event)
        return self.state

    @property
    def lost(self) -> str | None:
        """Why the run was abandoned, or None while it was not."""
        return self._lost_reason if self.state is RunPhase.LOST else None

    def explain_loss(self, reason: str) -> None:
        """A better reason for a loss already made (the database said why)."""
        if self.state is RunPhase.LOST:
            self._lost_reason = reason

    def retryable(self, ex: BaseException) -> bool:
        """Whether an attempt failing with `ex` may be retried (if attempts are left).
        Misuse (InvalidInput, SerializationError) and replay divergence fail the same way
        on every attempt: retrying them only delays the failure."""
        final: tuple[type[BaseException], ...] = (
            NonRetryable,
            InvalidInput,
            ReplayMismatch,
            *self.definition.non_retryable,
        )
        if isinstance(ex, BaseExceptionGroup):  # from a nursery inside the task: any one
            return ex.subgroup(final) is None
        return not isinstance(ex, final)

    def lose(self, reason: str, *, quiet: bool = False) -> bool:
        """Stop this run now and write nothing more for it (invariant 2). Returns whether
        this call lost it (False if it was lost, suspended or finished already). `quiet`:
        the caller logs it (see `log_loss`)."""
        before = self.state
        lost_now = self.advance(RunEvent.LOSE) is RunPhase.LOST and before is not RunPhase.LOST
        if lost_now:
            self._lost_reason = reason
            if not quiet:
                self.log_loss()
        self.scope.cancel()
        return lost_now

    def finish(self) -> RunPhase:
        """Its execution ended. Returns the state it was in until then: HANDING_BACK
        says to release it now."""
        ended_in = self.state
        self.advance(RunEvent.FINISH)
        self.gone.set()
        return ended_in

    def log_loss(self, *, cancelled: bool = False) -> None:
        """A task cancelled on purpose is logged at INFO; any other loss is a warning."""
        level = logging.INFO if cancelled else logging.WARNING
        log.log(
            level,
            "run %s of task %s abandoned: %s",
            self.run_id,
            self.task_id,
            self.lost,
            extra=self.log_fields(),
        )

    def log_fields(self, step: str | None = None) -> dict[str, Any]:
        """What every log record about this run carries (``extra=``), so that a JSON log
        formatter shows which task, run and attempt it is about."""
        return run_fields(self.task_id, self.run_id, self.task_name, self.queue, self.attempt, step)

    def step_raised(self, checkpoint: str, ex: BaseException) -> None:
        """A step's body raised `ex`: a failure of the attempt with it names that step."""
        self._raised_in = (checkpoint, ex)

    def step_of(self, ex: BaseException) -> str | None:
        """The step (its checkpoint name) whose body raised `ex`, if one did."""
        if self._raised_in is not None and self._raised_in[1] is ex:
            return self._raised_in[0]
        return None

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Call a store method, retrying while the database is unreachable (lost
        connections, and deadlocks or serialization failures: the transaction rolled
        back), but only while our lease can still be alive: past that the run is lost
        anyway."""

        async def attempt() -> T:
            await self.stop_if_lost()
            return await fn(*args, **kwargs)

        try:
            return await retrying(
                attempt,
                retry_on=(DatabaseUnavailable, *TRANSIENT),
                deadline=lambda: self.lease_deadline,
            )
        except (DatabaseUnavailable, *TRANSIENT) as ex:
            reason = f"database unreachable until the lease ran out ({ex})"
            self.lose(reason)
            await trio.lowlevel.checkpoint()
            raise LeaseLost(self.lost or reason) from None

    async def stop_if_lost(self) -> None:
        """Raise `LeaseLost` (after cancelling the run's scope) if the run was lost."""
        if self.lost is not None:
            self.scope.cancel()
            await trio.lowlevel.checkpoint()
            raise LeaseLost(self.lost)


def json_object(text: str) -> dict[str, Any]:
    """A claimed run's JSON object column; most are empty. Always a fresh dict."""
    return {} if text == "{}" else dict(json.loads(text))


@functools.lru_cache(maxsize=256)
def retry_strategy(text: str) -> RetryStrategy:
    """Runs of one kind of task share their strategy's JSON (claims and the reaper read
    it as text): parse each text once."""
    return RetryStrategy.from_json(json.loads(text))


def run_fields(
    task_id: UUID,
    run_id: UUID,
    task_name: str,
    queue: str,
    attempt: int,
    step: str | None = None,
) -> dict[str, Any]:
    """The ``extra=`` of a log record about a run (see docs/observability.md)."""
    return {
        "task_id": str(task_id),
        "run_id": str(run_id),
        "task_name": task_name,
        "queue": queue,
        "attempt": attempt,
        "step": step,
    }
