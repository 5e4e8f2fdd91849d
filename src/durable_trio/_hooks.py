"""Hooks: user code that the client and its workers call around spawns, runs, steps,
emits and cancels (what tracing, metrics and logging integrations are built on; see
durable_trio.contrib.opentelemetry).

Order: ``before_spawn`` runs in the spawning process before the row is written (client
spawns, `TaskContext.spawn`, schedule slots), and the headers it returns are stored with
the task, so they are kept through retries and seen again by the task's children when
those are spawned from inside it. A schedule slot's call is made by the worker whose
pass fires the slot, once per slot, not when the schedule is declared. ``around_run``
wraps each attempt of a task's code in the worker, outermost; ``around_step`` wraps each
`TaskContext.step` inside it, replays included (``StepCall.replayed`` says which:
nothing ran, so there is nothing to time). ``before_emit`` runs in the emitting process
before the event is written (client emits, `TaskContext.emit_event` the first time only:
a replayed emit writes nothing), and ``before_cancel`` in a client's `cancel` once the
task is found, before it is cancelled. An exception raised by a hook fails what it wraps
like one raised by the task's code (from a ``before_*`` hook: nothing is written).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs

if TYPE_CHECKING:
    from ._context import TaskContext

__all__ = ["CancelCall", "EmitCall", "Hooks", "SpawnCall", "StepCall"]


@attrs.frozen
class SpawnCall:
    """A spawn about to be written: the task's name, its queue, the headers its options
    give, and the spawning task when a task spawns a child."""

    task_name: str
    queue: str
    headers: Mapping[str, Any]
    parent_task_id: UUID | None = None


@attrs.frozen
class StepCall:
    """A step about to run (``replayed=False``) or return its stored value (True)."""

    name: str
    checkpoint: str
    replayed: bool


@attrs.frozen
class EmitCall:
    """An event about to be emitted: its name, its queue, and the emitting task when a
    task emits it."""

    name: str
    queue: str
    task_id: UUID | None = None


@attrs.frozen
class CancelCall:
    """A client's cancel of an existing task (and its unfinished descendants), about to be
    written; `cancel` returns False if the task had already ended."""

    task_id: UUID
    reason: str


BeforeSpawn = Callable[[SpawnCall], Mapping[str, Any] | None]
AroundRun = Callable[["TaskContext"], AbstractAsyncContextManager[Any]]
AroundStep = Callable[["TaskContext", StepCall], AbstractAsyncContextManager[Any]]
BeforeEmit = Callable[[EmitCall], object]
BeforeCancel = Callable[[CancelCall], object]


@attrs.frozen
class Hooks:
    """Callbacks for `Durable.connect(hooks=...)` (and the sync and asyncio clients'
    ``before_spawn``).

    - ``before_spawn(call: SpawnCall) -> headers | None``: headers to add to the task
      (they replace those of the same name in its options).
    - ``around_run(ctx) -> async context manager``: entered before the task's code runs
      in an attempt, exited after it returned, raised, or suspended (a suspension leaves
      it with the private ``Suspended`` BaseException: let it pass).
    - ``around_step(ctx, call: StepCall) -> async context manager``: the same around
      each step.
    - ``before_emit(call: EmitCall)``, ``before_cancel(call: CancelCall)``: told of an
      emit or a cancel about to be written (what they return is ignored).
    """

    before_spawn: BeforeSpawn | None = None
    around_run: AroundRun | None = None
    around_step: AroundStep | None = None
    before_emit: BeforeEmit | None = None
    before_cancel: BeforeCancel | None = None

    def spawn_headers(self, call: SpawnCall) -> dict[str, Any]:
        """The headers a spawn stores: its options' with the hook's over them."""
        headers = dict(call.headers)
        if self.before_spawn is not None:
            added = self.before_spawn(call)
            if added:
                headers.update(added)
        return headers


NO_HOOKS = Hooks()
