"""The worker: one trio nursery holding a claim loop, a heartbeat loop, a listener and one
cancel-scoped execute task per claimed run.

Lifetimes:
- `Worker.run()` returns after a graceful `shutdown()`: claiming stops, in-flight runs get
  `shutdown_grace` seconds to finish, then they are cancelled and handed back (released)
  without costing an attempt.
- If the task running `Worker.run()` is cancelled from outside, the worker stops at once
  and hands each in-flight run back (within 2 s, without costing an attempt); checkpoints
  not yet written are lost, so their steps run again. Only a crash leaves runs to their
  leases.
- Task code raising KeyboardInterrupt (Ctrl-C) fails that attempt, then the worker hands
  its other runs back and `run()` raises KeyboardInterrupt. SystemExit is an ordinary
  failure of the task.

No row's data stops a loop: a statement that fails on it (DATA_ERRORS) is retried row
by row on that failure path only, and the task whose row breaks it is failed for good
with an UnprocessableTask error (docs/reliability.md, "Poison rows").
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import psycopg
import trio

from . import _failures, _serde
from ._context import TaskContext
from ._core.backoff import BackoffPolicy
from ._core.capacity import QueueRotation, Slots
from ._core.ids import uuid7
from ._core.lifecycle import RunEvent, RunPhase
from ._core.options import (
    RETENTION_DUTY,
    RETENTION_EVERY,
    UNSERVED_AFTER,
    UNSERVED_EVERY,
    WorkerOptions,
    registry_ttl,
)
from ._core.report import PassReport, RunOutcome, RunReport, outcome_of
from ._core.retry import FailureDecision, decide_failure
from ._db import CONNECTION_LOST, Listener, Pool
from ._errors import (
    ConfigurationError,
    InvalidInput,
    LeaseLost,
    SerializationError,
)
from ._hooks import NO_HOOKS, Hooks
from ._retrying import retrying
from ._rows import ClaimedRun, ExpiredRun
from ._run import RunState, Suspended, retry_strategy, run_fields
from ._schedules import schedule_pass
from ._store import DATA_ERRORS, ClaimArgs, Store
from ._task import TaskDefinition
from ._writer import Writer

__all__ = ["Worker", "reap_expired"]

log = logging.getLogger("durable_trio.worker")
# How long a worker cancelled from outside may spend handing its runs back (all at once,
# each in its own task): a database that does not answer by then is not waited for.
HAND_BACK_GRACE = 2.0
# A graceful stop hands runs back once their queued checkpoints are written: longer.
DRAIN_HAND_BACK_GRACE = 5.0
# The claim loop's pauses while the database is away (the listener's are longer still).
CLAIM_BACKOFF = BackoffPolicy(first=0.05, cap=2.0)
RETENTION_BATCH = 1000  # rows of each kind per retention transaction
T = TypeVar("T")
RETRYABLE_IO = CONNECTION_LOST
# Best effort: a hand-back that fails leaves the run to its lease.
HAND_BACK_ERRORS: tuple[type[BaseException], ...] = (psycopg.Error, *RETRYABLE_IO)
NOTIFY_CHANNEL = "durable_trio"
CANCEL_CHANNEL = "durable_trio_cancel"


class Worker:
    """Claims and executes runs of the tasks registered on a client. See module docstring."""

    def __init__(
        self,
        *,
        url: str,
        schema: str,
        queues: Sequence[str],
        registry: dict[str, TaskDefinition[Any, Any]],
        prepare_spawn: Callable[..., dict[str, Any]],
        options: WorkerOptions,
        hooks: Hooks = NO_HOOKS,
    ) -> None:
        self.options = options
        self._url = url
        self._schema = schema
        self._queues = list(options.queues or queues)
        self._rotation = QueueRotation(self._queues)  # which queue a claim tries first
        self._registry = registry
        self._prepare_spawn = prepare_spawn
        self._hooks = hooks
        # Cancelled from outside, runs are handed back; tests that play a crash (a process
        # that vanished and can write nothing more) turn this off.
        self.hand_back_on_cancel = True
        self._runs: dict[UUID, RunState] = {}
        # Runs whose task code is executing hold slots; claims in flight reserve some;
        # runs claimed ahead (`prefetch`) are held until a slot frees.
        self._slots: Slots[RunState] = Slots(options.concurrency, options.prefetch)
        # A held run's execute task waits on its event, set when the run takes a slot.
        self._slot_events: dict[RunState, trio.Event] = {}
        self._execs: trio.Nursery | None = None
        self._names: list[str] = []
        self._wake = trio.Event()
        self._beat_now = trio.Event()
        self._drained = trio.Event()
        self._reservations_done = trio.Event()
        self._stopping = False
        self._ran = False  # `run()` was called: a worker runs once
        self._healthy = False
        self._last_reap = -1e9
        self._last_unserved = -1e9
        self._listener: Listener | None = None
        self._writer: Writer | None = None
        self._control_nursery: trio.Nursery | None = None
        self.claimed_total = 0
        # A claim or reap is in flight: the runs it takes (not in _runs yet) or frees (not
        # claimable yet) are invisible to anyone judging whether the worker is idle.
        self._claiming = False
        # Task code raised KeyboardInterrupt: stop as soon as the runs are handed back.
        self._interrupted = False

    def __repr__(self) -> str:
        return (
            f"<Worker {self.options.worker_id} queues={self._queues} in_flight={len(self._runs)}>"
        )

    @property
    def worker_id(self) -> str:
        return self.options.worker_id

    @property
    def in_flight(self) -> int:
        """How many runs this worker holds: executing, claimed ahead and waiting for a
        slot (`WorkerOptions.prefetch`), or whose outcome is still being written."""
        return len(self._runs)

    @property
    def claiming(self) -> bool:
        """A claim or reap is under way: the runs it takes (not in `in_flight` yet) or frees
        (not claimable yet) are invisible to anyone judging whether the queue is idle."""
        return self._claiming

    @property
    def busy(self) -> bool:
        """Holding runs, claiming, or with writes queued: not idle from the outside."""
        return bool(self._runs) or self._claiming or self.pending_writes > 0

    @property
    def pending_writes(self) -> int:
        """Checkpoints and completions queued for, or in, this worker's next batch."""
        return self._writer.pending if self._writer is not None else 0

    @property
    def healthy(self) -> bool:
        """True while the last database round trip of the claim loop succeeded."""
        return self._healthy

    def shutdown(self) -> None:
        """Ask for a graceful stop; `run()` returns once in-flight runs are done or handed back."""
        self._stopping = True
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED) -> None:
        """Work the queues until `shutdown()`. Use in your own nursery with ``nursery.start``.
        A worker runs once: after `run()` returned, make another (`Durable.new_worker`)."""
        if self._ran:
            raise ConfigurationError(
                f"worker {self.worker_id} has run already and stopped: a worker runs once, "
                f"make another with client.new_worker(options)"
            )
        self._ran = True
        names = self._names = sorted(self._registry)
        self._slots = Slots(self.options.concurrency, self.options.prefetch)
        if not names:
            log.warning("worker %s has no registered tasks: it will claim nothing", self.worker_id)
        size = min(self.options.concurrency, 32)
        control_pool = Pool(self._url, max_size=2)
        exec_pool = Pool(self._url, max_size=size)
        self._control = Store(control_pool, self._schema)
        self._exec = Store(exec_pool, self._schema)
        try:
            self._writer = Writer(self._exec, self.worker_id, claimer=self)
            with suppress(*RETRYABLE_IO):  # unreachable: the claim loop retries and says so
                await self._control.check_schema()
            async with trio.open_nursery() as control:
                self._control_nursery = control
                self._listener = Listener(
                    # Not `self._wake.set`: the claim loop replaces `_wake` every round, so a
                    # bound method would wake a stale event and a reconnect would go unseen.
                    self._url,
                    [NOTIFY_CHANNEL, CANCEL_CHANNEL],
                    self._on_notify,
                    lambda: self._wake.set(),
                )
                await control.start(self._listener.run)
                control.start_soon(self._heartbeat_loop)
                control.start_soon(self._writer.run)
                if self.options.retention is not None:
                    control.start_soon(self._retention_loop, self.options.retention)
                async with trio.open_nursery() as execs:
                    self._execs = execs
                    task_status.started(self)
                    log.info(
                        "worker %s started: queues %s, tasks %s, concurrency %d",
                        self.worker_id,
                        ", ".join(self._queues),
                        ", ".join(names),
                        self.options.concurrency,
                    )
                    await self._claim_loop(execs, names)
                    await self._drain()
                    self._execs = None
                control.cancel_scope.cancel()
            if self._interrupted:
                raise KeyboardInterrupt
        finally:
            with trio.CancelScope(shield=True):
                await self._leave_registry()
                await exec_pool.aclose()
                await control_pool.aclose()
            log.info("worker %s stopped", self.worker_id)

    # -- notifications ----------------------------------------------------------------

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == CANCEL_CHANNEL:
            if payload == self._schema and self._runs:
                self._beat_now.set()
        elif (
            payload.partition(".")[0] == self._schema and payload.partition(".")[2] in self._queues
        ):
            self._wake.set()

    # -- claiming ---------------------------------------------------------------------

    async def _claim_loop(self, nursery: trio.Nursery, names: list[str]) -> None:
        while not self._stopping:
            self._wake = trio.Event()
            asked, got = await retrying(
                functools.partial(self._claim_round, nursery, names),
                retry_on=(*RETRYABLE_IO, *DATA_ERRORS),
                policy=CLAIM_BACKOFF,
                on_retry=self._claim_failed,
                sleep=self._sleep_unless_stopping,
            )
            if got and got == asked:
                await trio.lowlevel.checkpoint()
                continue
            # Only look up the next due time when a slot is free: a full worker is woken by
            # its own runs finishing (asked == 0 means no free slot, or nothing to claim).
            await self._idle_wait(names, have_capacity=got < asked)

    async def _claim_round(self, nursery: trio.Nursery, names: list[str]) -> tuple[int, int]:
        if self._stopping:  # asked to stop during a pause: nothing more to claim
            return 0, 0
        self._claiming = True
        try:
            asked, got = await self._claim_once(nursery, names)
            await self._maybe_reap()
        finally:
            self._claiming = False
        self._healthy = True
        return asked, got

    async def _claim_failed(self, ex: BaseException, pause: float) -> None:
        if isinstance(ex, RETRYABLE_IO):
            self._healthy = False
            log.warning("worker %s: database unavailable (%s); retrying", self.worker_id, ex)
            await self._exec.pool.discard_idle()
            await self._control.pool.discard_idle()
        else:
            # Not even run by run could the claim get past some row (see
            # _claim_from): keep the worker, and its runs in hand, alive.
            log.error("worker %s: claiming failed (%s); retrying", self.worker_id, ex)

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self._wait_stop()

    async def _wait_stop(self) -> None:
        while not self._stopping:
            await trio.sleep(3600)

    def _free_slots(self) -> int:
        return self._slots.free(len(self._runs))

    async def _claim_once(self, nursery: trio.Nursery, names: list[str]) -> tuple[int, int]:
        free = self._free_slots()
        if free <= 0 or not names or not self._slots.may_claim():
            return 0, 0  # a claim in flight wakes the loop when it is answered
        if self._writer_claims_next():
            return 0, 0
        asked = got = 0
        for queue in self._queue_order():
            limit = min(self._free_slots(), self.options.effective_batch)
            if limit <= 0:
                break
            asked += limit
            # Reserved while in flight, or the writer could claim the same slots meanwhile.
            self._slots.reserved += limit
            try:
                rows = await self._claim_from(queue, names, limit)
            finally:
                self._slots.reserved -= limit
            for row in rows:
                self._start(nursery, row, queue)
            got += len(rows)
        self.claimed_total += got
        return asked, got

    async def _claim_from(self, queue: str, names: list[str], limit: int) -> list[ClaimedRun]:
        lease, version = self.options.claim_timeout, self.options.version
        try:
            return await self._control.claim(queue, self.worker_id, names, limit, lease, version)
        except DATA_ERRORS as ex:
            # One due run's data breaks the claim statement (and would break it for every
            # worker, every time): claim run by run, failing the run that breaks it.
            log.error(
                "worker %s: claim from queue %r failed (%s); claiming run by run",
                self.worker_id,
                queue,
                _failures.database_error(ex),
            )
            return await self._control.claim(
                queue, self.worker_id, names, limit, lease, version, singly=True
            )

    async def _idle_wait(self, names: list[str], *, have_capacity: bool) -> None:
        timeout = self.options.poll_interval
        if self._listener is not None and not self._listener.connected:
            timeout = min(timeout, 0.5)
        if have_capacity:
            try:
                due = await self._control.next_due(self._queues, names, self.options.version)
            except RETRYABLE_IO as ex:
                # The next claim attempt finds out and backs off; never crash the nursery.
                self._healthy = False
                log.warning("worker %s: database unavailable (%s)", self.worker_id, ex)
                due = None
            except DATA_ERRORS as ex:
                # A due time out of range (say, a run made available at '-infinity'):
                # poll instead; the claim itself deals with the run.
                log.error("worker %s: next due time unknown (%s)", self.worker_id, ex)
                due = None
            if due is not None:
                timeout = min(timeout, max(due, 0.0) + 0.001)
        with trio.move_on_after(timeout):
            await self._wake.wait()

    def _start(self, nursery: trio.Nursery, row: ClaimedRun, queue: str) -> None:
        assert self._writer is not None  # made by run() before the claim loop starts
        try:
            run = RunState.from_claim(
                row,
                queue=queue,
                definition=self._registry[row.task_name],
                store=self._exec,
                writer=self._writer,
                worker_id=self.worker_id,
                claim_timeout=self.options.claim_timeout,
                prepare_spawn=self._prepare_spawn,
                hooks=self._hooks,
            )
        except Exception as ex:  # noqa: BLE001 - any unreadable stored value
            nursery.start_soon(self._reject, row, queue, ex)
            return
        previous = self._runs.get(run.run_id)
        self._runs[run.run_id] = run
        slot = None
        if not self._slots.place(run):  # claimed ahead: it starts when a slot frees
            slot = self._slot_events[run] = trio.Event()
        if log.isEnabledFor(logging.DEBUG):  # its fields cost more than the rest of a start
            fields = run.log_fields()
            log.debug("claimed run %s of task %r", run.run_id, run.task_name, extra=fields)
        name = f"durable_trio run {run.task_name}"
        if previous is None:
            nursery.start_soon(self._execute, run, slot, name=name)
        else:
            # Claimed again (woken the instant its suspension committed) while the
            # attempt that suspended it is still unwinding here: run it after that one.
            nursery.start_soon(self._execute_after, previous, run, slot, name=name)

    async def _execute_after(
        self, previous: RunState, run: RunState, slot: trio.Event | None
    ) -> None:
        await previous.gone.wait()
        await self._execute(run, slot)

    def _start_held(self) -> None:
        """Give freed slots to held runs, first claimed first. Not once stopping: held
        runs are handed back then (_drain), so that another worker starts them now."""
        if self._stopping:
            return
        for run in self._slots.promote():
            self._slot_events.pop(run).set()

    def _hand_back_held(self) -> None:
        """Stopping: held runs never started, so they go back at once, attempt unspent."""
        for run in self._slots.held_runs():
            self._stop_for_hand_back(run)

    async def _reject(self, row: ClaimedRun, queue: str, ex: Exception) -> None:
        """A claimed run whose stored data this worker cannot read (a retry strategy or
        headers that no version of this library wrote): fail its task for good, since
        every worker would fail the same way."""
        why = f"the claimed run's stored data could not be read ({_failures.summary(ex)})"
        fields = run_fields(row.task_id, row.run_id, row.task_name, queue, row.attempt)
        log.error(
            "run %s of task %s: %s; failing the task", row.run_id, row.task_id, why, extra=fields
        )
        error = _failures.unprocessable(why, stage="claim", attempt=row.attempt)
        # Should this fail too, the lease expires and the reaper fails the task.
        with suppress(*RETRYABLE_IO, *DATA_ERRORS):
            await self._exec.fail_for_good(row.run_id, self.worker_id, error)

    # -- claims riding along with the writer (see _writer.Claimer) ----------------------

    def _claim_with_writes(self) -> bool:
        return self._slots.claim_with_writes(len(self._runs))

    def _queue_order(self) -> list[str]:
        return self._rotation.next_order()

    def _writer_claims_next(self) -> bool:
        """The writer's round trip starts now and claims for the free slots: one round
        trip and one commit for a run's completion and the claim of the next. It wakes the
        claim loop after (`claimed`), so there is nothing for the loop to do until then."""
        assert self._writer is not None  # made by run() before the claim loop starts
        return self._claim_with_writes() and self._writer.about_to_write

    def reserve_claim(self) -> ClaimArgs | None:
        free = self._free_slots()
        if free <= 0 or not self._claim_with_writes() or not self.claim_wanted():
            return None
        if not self._slots.may_claim():  # one claim at a time while runs are held
            return None
        limit = min(free, self.options.effective_batch)
        self._slots.reserved += limit
        queue = self._queue_order()[0]
        return ClaimArgs(
            queue, self._names, limit, self.options.claim_timeout, self.options.version
        )

    def claim_wanted(self) -> bool:
        return not self._stopping and self._execs is not None and bool(self._names and self._queues)

    def claimed(self, args: ClaimArgs, rows: list[ClaimedRun]) -> None:
        self._slots.reserved -= args.limit
        if rows:
            # The exec nursery outlives every reservation: _drain waits for them.
            assert self._execs is not None
            for row in rows:
                self._start(self._execs, row, args.queue)
            self.claimed_total += len(rows)
        if self._free_slots() > 0:  # a short claim: the loop looks elsewhere, or idles
            self._wake.set()
        self._reservations_done.set()

    async def _maybe_reap(self) -> None:
        now = time.monotonic()
        if now - self._last_reap < min(self.options.poll_interval, self.options.claim_timeout / 3):
            return
        self._last_reap = now
        await reap_expired(self._control, self._queues, hooks=self._hooks)
        await self._announce(now)

    async def _retention_loop(self, older_than: float) -> None:
        """`WorkerOptions.retention`, beside the claim loop rather than in it: a first pass
        over millions of old tasks takes minutes, which must delay neither claims nor the
        heartbeat nor the registry refresh. Its own connection (the advisory lock that
        makes it one worker at a time is held for the whole pass), paced to
        RETENTION_DUTY so that the runs keep the database."""
        pool = Pool(self._url, max_size=1)
        try:
            store = Store(pool, self._schema)
            while True:
                await self._retain(store, older_than)
                await trio.sleep(RETENTION_EVERY)
        finally:
            with trio.CancelScope(shield=True):
                await pool.aclose()

    async def _retain(self, store: Store, older_than: float) -> None:
        """One retention pass, unless another worker of the schema is doing one. A failure
        is logged, never fatal; the next pass tries again."""
        try:
            removed = await store.cleanup_alone(older_than, RETENTION_BATCH, RETENTION_DUTY)
        except RETRYABLE_IO as ex:
            log.warning("worker %s: retention pass skipped (%s)", self.worker_id, ex)
            return
        except Exception:
            log.exception("worker %s: the retention pass failed", self.worker_id)
            return
        if removed is not None and (removed.tasks or removed.events):
            log.info(
                "worker %s removed %d finished task(s) and %d event(s) older than %gs",
                self.worker_id,
                removed.tasks,
                removed.events,
                older_than,
            )

    async def _announce(self, now: float) -> None:
        """Refresh this worker's row in the registry; now and then, warn of due runs that
        no live worker serves. Neither may stop the worker: a failure is logged."""
        try:
            await self._control.register_worker(
                self.worker_id,
                socket.gethostname(),
                os.getpid(),
                self._queues,
                self._names,
                self.options.concurrency,
                ttl=registry_ttl(self.options.claim_timeout, self.options.poll_interval),
            )
            if now - self._last_unserved >= UNSERVED_EVERY:
                self._last_unserved = now
                for gap in await self._control.unserved_tasks(UNSERVED_AFTER):
                    log.warning(
                        "%d run(s) of task %r on queue %r are due since %s and no live "
                        "worker has registered that name: is it misspelt, or not deployed?",
                        gap.runs,
                        gap.task_name,
                        gap.queue,
                        gap.oldest_due.isoformat(timespec="seconds"),
                    )
        except RETRYABLE_IO:
            raise
        except Exception:
            log.exception("worker %s: the registry pass failed", self.worker_id)

    async def _leave_registry(self) -> None:
        """Remove this worker's row, giving up quickly when the database is gone."""
        with trio.move_on_after(1.0), suppress(Exception):
            await self._control.unregister_worker(self.worker_id)

    # -- heartbeats -------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            with trio.move_on_after(self.options.heartbeat_interval):
                await self._beat_now.wait()
            self._beat_now = trio.Event()
            await self._beat()

    async def _beat(self) -> None:
        gone = (RunPhase.LOST, RunPhase.FINISHED)  # nothing to renew
        runs = [r for r in self._runs.values() if r.state not in gone]
        if not runs:
            return
        sent = time.monotonic()
        try:
            try:
                renewed = await self._control.heartbeat(
                    self.worker_id, [r.run_id for r in runs], self.options.claim_timeout
                )
            except DATA_ERRORS as ex:
                renewed = await self._beat_singly(runs, ex)
        except RETRYABLE_IO as ex:
            log.warning("worker %s: heartbeat failed (%s)", self.worker_id, ex)
            for run in runs:
                if time.monotonic() >= run.lease_deadline:
                    run.lose("lease ran out while the database was unreachable")
            return
        lost = []
        for run in runs:
            if run.run_id in renewed:
                if renewed[run.run_id][1]:  # a busy run is held but keeps its old lease
                    run.lease_deadline = sent + self.options.claim_timeout
            elif not run.state.ending:
                # An ending run missing from the answer was ended by its own write (the
                # completion or failure committed while the heartbeat was in flight); had
                # the run been lost, that write's fence says so.
                lost.append(run)
        self._lose_all(lost)

    async def _beat_singly(
        self, runs: list[RunState], ex: Exception
    ) -> dict[UUID, tuple[datetime, bool]]:
        """The heartbeat statement failed on some run's data: renew run by run, and fail
        the task of each run that breaks it (it would break every heartbeat after)."""
        log.error(
            "worker %s: heartbeat failed (%s); renewing run by run",
            self.worker_id,
            _failures.database_error(ex),
        )
        renewed: dict[UUID, tuple[datetime, bool]] = {}
        for run in runs:
            try:
                renewed |= await self._control.heartbeat(
                    self.worker_id, [run.run_id], self.options.claim_timeout
                )
            except DATA_ERRORS as bad:
                why = f"its heartbeat could not be recorded ({_failures.database_error(bad)})"
                log.error(
                    "run %s of task %s: %s; failing the task",
                    run.run_id,
                    run.task_id,
                    why,
                    extra=run.log_fields(),
                )
                error = _failures.unprocessable(why, stage="heartbeat", attempt=run.attempt)
                with suppress(*DATA_ERRORS):  # else its lease expires: the reaper fails it
                    await self._control.fail_for_good(run.run_id, self.worker_id, error)
                run.lose(f"task failed: {why}")
        return renewed

    def _lose_all(self, runs: list[RunState]) -> None:
        """Abandon runs a heartbeat did not renew, at once; why (a deliberate cancel is
        not a warning) is asked in the background, so the heartbeat loop never waits."""
        lost = [run for run in runs if run.lose("lease lost", quiet=True)]
        if lost:
            assert self._control_nursery is not None  # heartbeats run inside it
            self._control_nursery.start_soon(self._log_losses, lost)

    async def _log_losses(self, lost: list[RunState]) -> None:
        states: dict[UUID, tuple[str, str | None]] = {}
        try:
            with suppress(*RETRYABLE_IO, psycopg.Error), trio.move_on_after(5):
                states = await self._control.lost_runs([r.run_id for r in lost])
        finally:  # logged even when the worker stops meanwhile
            # Cut short by a stop (graceful, or the worker cancelled from outside)?
            stopped = self._stopping or trio.current_effective_deadline() == -math.inf
            for run in lost:
                state, reason = states.get(run.run_id, (None, None))
                if state == "cancelled":  # the run itself, not only its task
                    run.explain_loss(f"task cancelled: {reason}")
                elif state is not None:
                    run.explain_loss("lease lost (expired, or the run was taken over)")
                elif stopped:
                    # Not known: the stop cut the lookup short. Most often a cancel the
                    # last heartbeat found, so not a warning (the run is gone either way).
                    run.explain_loss("not renewed by the last heartbeat before the stop")
                run.log_loss(cancelled=state == "cancelled" or (state is None and stopped))

    # -- executing --------------------------------------------------------------------

    async def _execute(self, run: RunState, slot: trio.Event | None = None) -> None:
        cancelled = False
        try:
            with run.scope:
                if slot is not None:  # held: cancelled while waiting, it never starts
                    await slot.wait()
                await self._run_task(run)
        except trio.Cancelled:
            # Not the run's own scope (that one stops here): the worker's task was cancelled
            # from outside (Ctrl-C under trio.run, a parent scope). Hand the run back at
            # once so another worker takes it without spending an attempt; checkpoints not
            # yet written are lost as in a crash (their steps run again).
            cancelled = True
            if self.hand_back_on_cancel:
                run.advance(RunEvent.HAND_BACK)
            raise
        except Exception:
            # A bug or an unexpected database error while recording this run's outcome:
            # abandon the run (its lease expires and it is retried) rather than let one
            # run take down the worker's nursery and every other run with it.
            log.exception(
                "run %s of task %s: internal error; abandoning it",
                run.run_id,
                run.task_id,
                extra=run.log_fields(),
            )
            run.lose("internal error while recording the outcome")
        finally:
            self._free_slot(run)
            ended_in = run.finish()
            before = self._free_slots()
            if self._runs.get(run.run_id) is run:  # not if claimed again meanwhile
                del self._runs[run.run_id]
            # Finished runs count against the runs in hand (2 x concurrency): wake the
            # claim loop only if this one's leaving freed a slot that is not claimed for.
            if self._free_slots() > before and not self._writer_claims_next():
                self._wake.set()
            if not self._runs:
                self._drained.set()
            if ended_in is RunPhase.HANDING_BACK and not cancelled:
                await self._hand_back(run, DRAIN_HAND_BACK_GRACE, settle=True)
            elif ended_in is RunPhase.HANDING_BACK and self.hand_back_on_cancel:
                # The writer is cancelled too: nothing still queued will be written.
                await self._hand_back(run, HAND_BACK_GRACE, settle=False)

    async def _hand_back(self, run: RunState, grace: float, *, settle: bool) -> None:
        """Release a run that stopped while still held, so that another worker takes it
        at once without spending an attempt: a graceful stop, or the worker cancelled
        from outside. Best effort within `grace` seconds, shielded: a database that does
        not answer (or refuses) leaves the run to its lease. `settle`: the checkpoints
        already queued are written first (the writer still runs)."""
        shielded = trio.CancelScope(shield=True)
        with shielded, trio.move_on_after(grace), suppress(*HAND_BACK_ERRORS):
            if settle and run.last_write is not None:
                await run.last_write.done.wait()
            await self._exec.release(run.run_id, self.worker_id)

    async def _run_task(self, run: RunState) -> None:
        definition = run.definition
        ctx = TaskContext(run)
        try:
            params = _about(run, "params", _serde.structure, run.params, definition.params_type)
            result = await _call_task(run, ctx, params)
            ctx._verify_replayed()  # ReplayMismatch: fails like a task error
            text = _about(run, "result", _serde.roundtrip, result, definition.output_type)[0]
        except (Suspended, LeaseLost):
            return
        except trio.Cancelled:
            raise
        except BaseExceptionGroup as group:
            # From a nursery inside the task: a suspension or cancellation in it wins.
            if group.subgroup(trio.Cancelled) is not None:
                raise
            if group.subgroup((Suspended, LeaseLost)) is not None:
                return
            await self._fail_attempt(run, ctx, group)
            return
        except BaseException as ex:  # noqa: BLE001 - every task error is recorded
            await self._fail_attempt(run, ctx, ex)
            return
        if run.lost is not None:  # its code returned after the loss: nothing to write
            return
        # Written with the checkpoint of a last step that is still queued, if any.
        run.advance(RunEvent.COMPLETE)
        completion = run.writer.submit(run, None, text)
        self._free_slot(run)
        # Shielded, briefly: a stop that cancelled this run's scope just as its code
        # returned would otherwise leave the completion queued with nothing to hand the
        # run back (a completing run is not handed back), and the writer stopped after.
        with trio.CancelScope(shield=True), trio.move_on_after(HAND_BACK_GRACE):
            await completion.done.wait()
        if not completion.done.is_set():
            return  # the writer stopped with it (the worker cancelled): left to its lease
        if not completion.owned:
            run.lose("completion was fenced")
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("completed task %r %s", run.task_name, run.task_id, extra=run.log_fields())

    async def _fail_attempt(self, run: RunState, ctx: TaskContext, ex: BaseException) -> None:
        """Record the attempt's failure. SystemExit is a failure like any other: one task
        calling sys.exit() must not stop the worker. KeyboardInterrupt (Ctrl-C, which
        trio raises in whatever task code is running) is recorded the same way, then the
        worker stops: its other runs are handed back and `run()` raises it."""
        interrupted = isinstance(ex, KeyboardInterrupt) or (
            isinstance(ex, BaseExceptionGroup) and ex.subgroup(KeyboardInterrupt) is not None
        )
        try:
            await ctx.settle()
            await self._fail(run, ex)
        finally:
            if interrupted:
                self._interrupt(run)

    def _interrupt(self, interrupted: RunState) -> None:
        self._interrupted = True
        self.shutdown()
        for run in self._runs.values():
            if run is not interrupted:
                self._stop_for_hand_back(run)

    def _stop_for_hand_back(self, run: RunState) -> None:
        """Cancel a run whose code still runs, to hand it back when it exits. A run whose
        code returned is left alone: only its completion's write is left to finish. A
        held run, which never started, goes back too."""
        if self._slots.holds(run) or self._slots.is_held(run):
            run.advance(RunEvent.HAND_BACK)
            run.scope.cancel()

    def _free_slot(self, run: RunState) -> None:
        if self._slots.drop(run):  # held, it ends without having started
            del self._slot_events[run]
            return
        if self._slots.vacate(run):
            self._start_held()
            if not self._writer_claims_next():
                self._wake.set()

    async def _fail(self, run: RunState, ex: BaseException) -> None:
        retryable = run.retryable(ex)
        decision = decide_failure(
            attempt=run.attempt,
            max_attempts=run.max_attempts,
            retryable=retryable,
            strategy=run.retry,
            rand=random.random(),
        )
        error = _failures.error_record(ex, retryable=retryable, attempt=run.attempt)
        _log_failure(run, ex, decision, formatted=error["traceback"] != _failures.NO_TRACEBACK)
        run.advance(RunEvent.RECORD_FAILURE)
        try:
            state = await self._record_failure(run, error, decision)
        except DATA_ERRORS as db_error:
            if not decision.retry:
                raise
            # The retry cannot be stored (its delay overflows the database's timestamps,
            # say): fail the task for good rather than leave it running until its lease
            # expires, when the reaper would meet the same error.
            why = (
                f"attempt {run.attempt} failed and its retry in {decision.delay:.6g} s "
                f"could not be scheduled ({_failures.database_error(db_error)})"
            )
            log.error("task %r %s: %s", run.task_name, run.task_id, why, extra=run.log_fields())
            error = _failures.unprocessable(why, stage="retry", attempt=run.attempt, cause=error)
            state = await self._record_failure(run, error, FailureDecision(retry=False))
        if state is None:
            run.lose("failure report was fenced")

    async def _record_failure(
        self, run: RunState, error: dict[str, Any], decision: FailureDecision
    ) -> str | None:
        return await run.call(
            self._exec.fail,
            run.run_id,
            self.worker_id,
            _serde.dumps(error),
            retry=decision.retry,
            delay=decision.delay,
            new_run_id=uuid7(),
        )

    async def _drain(self) -> None:
        """Graceful stop: let runs finish within the grace period, then hand them back."""
        # A claim made with the writer's round trip in flight still starts its runs here.
        while self._slots.reserved:
            self._reservations_done = trio.Event()
            await self._reservations_done.wait()
        self._hand_back_held()
        if not self._runs:
            return
        self._drained = trio.Event()
        with trio.move_on_after(self.options.shutdown_grace):
            await self._drained.wait()
        for run in list(self._runs.values()):
            self._stop_for_hand_back(run)

    # -- one deterministic pass (tests, scripts) ----------------------------------------

    async def run_once(self, *, limit: int | None = None) -> PassReport:
        """Claim up to `limit` runs that are due now on this worker's queues (default:
        ``concurrency``), run each to completion, suspension or failure inside the
        calling task, and return what happened once every outcome is written.

        No claim loop and no polling: runs spawned or woken by this pass are left for the
        next one, so a test advances step by step. Leases are renewed meanwhile. Cancelling
        the caller hands the runs back, attempts unspent, as for `run()` (to play a crash
        instead, set ``worker.hand_back_on_cancel = False`` first: the runs are then left
        to their leases). Not while `run()` is running.
        """
        if self._execs is not None:
            raise ConfigurationError(f"worker {self.worker_id} is running: run_once needs it idle")
        limit = self.options.concurrency if limit is None else limit
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput(f"limit must be a positive integer, got {limit!r}")
        names = self._names = sorted(self._registry)
        # Every run claimed here starts at once: a pass holds none back.
        self._slots = Slots(self.options.concurrency)
        control_pool = Pool(self._url, max_size=1)
        exec_pool = Pool(self._url, max_size=min(limit, 32))
        runs: list[RunState | ClaimedRun] = []
        try:
            self._control = Store(control_pool, self._schema)
            self._exec = Store(exec_pool, self._schema)
            self._writer = Writer(self._exec, self.worker_id)
            async with trio.open_nursery() as control:
                self._control_nursery = control
                control.start_soon(self._heartbeat_loop)
                control.start_soon(self._writer.run)
                async with trio.open_nursery() as execs:
                    self._execs = execs
                    try:
                        await self._claim_for_pass(execs, names, limit, runs)
                    finally:
                        self._execs = None
                control.cancel_scope.cancel()
            return await self._report(runs)
        finally:
            with trio.CancelScope(shield=True):
                await exec_pool.aclose()
                await control_pool.aclose()

    async def _claim_for_pass(
        self,
        execs: trio.Nursery,
        names: list[str],
        limit: int,
        runs: list[RunState | ClaimedRun],
    ) -> None:
        # Each pass starts one queue further along, as the claim loop does: none starves.
        for queue in self._queue_order() if names else []:
            if len(runs) >= limit:
                break
            rows = await self._control.claim(
                queue,
                self.worker_id,
                names,
                limit - len(runs),
                self.options.claim_timeout,
                self.options.version,
            )
            for row in rows:
                self._start(execs, row, queue)
                # A run whose stored data could not be read is not started: its task is
                # failed for good, and the report says so from the stored outcome.
                runs.append(self._runs.get(row.run_id, row))
            self.claimed_total += len(rows)

    async def _report(self, runs: list[RunState | ClaimedRun]) -> PassReport:
        stored = await self._control.run_outcomes([run.run_id for run in runs]) if runs else {}
        reports = []
        for run in runs:
            row = stored.get(run.run_id)
            started = run if isinstance(run, RunState) else None
            outcome = outcome_of(
                suspended=started is not None and started.state is RunPhase.SUSPENDED,
                lost=started is not None and started.lost is not None,
                state=None if row is None else row.state,
                retried=row is not None and row.retried,
            )
            error = row.error if row is not None and outcome in _FAILURES else None
            reports.append(
                RunReport(run.task_id, run.run_id, run.task_name, run.attempt, outcome, error)
            )
        return PassReport(tuple(reports))


_FAILURES = (RunOutcome.RETRYING, RunOutcome.FAILED)


def _about(run: RunState, what: str, convert: Callable[..., T], *args: Any) -> T:
    """`convert(*args)`, its SerializationError saying it was this task's params or result
    (docs/serialization.md promises the place is named)."""
    try:
        return convert(*args)
    except SerializationError as ex:
        raise SerializationError(f"{what} of task {run.task_name!r}: {ex}") from None


def _log_failure(
    run: RunState, ex: BaseException, decision: FailureDecision, *, formatted: bool
) -> None:
    """An attempt's error, with its traceback: what the task's owner needs to see without
    querying the database. WARNING while a retry follows, ERROR when the task failed."""
    what = _attempt(run.task_name, run.task_id, run.attempt, run.max_attempts)
    # The traceback only if it can be formatted: a hostile exception must not break the
    # log line (nor the handler, which may raise on a formatting error).
    exc_info = ex if formatted else None
    shown = _failures.summary(ex)
    fields = run.log_fields(run.step_of(ex))
    if decision.retry:
        log.warning(
            "%s failed; retrying in %.3g s: %s",
            what,
            decision.delay,
            shown,
            exc_info=exc_info,
            extra=fields,
        )
    else:
        log.error(
            "%s failed; no attempts left or not retryable: %s",
            what,
            shown,
            exc_info=exc_info,
            extra=fields,
        )


async def _enforce_deadlines(store: Store, limit: int) -> None:
    """The deadline sweep must not take the claim loop down: a database error other than
    a lost connection (say, grants not re-run after an upgrade) is logged and the sweep
    tried again on the next pass."""
    try:
        await store.enforce_deadlines(limit)
    except RETRYABLE_IO:
        raise
    except (psycopg.Error, ConfigurationError) as ex:
        log.warning("deadline sweep failed (%s); trying again on the next pass", ex)


async def reap_expired(
    store: Store, queues: Sequence[str], limit: int = 100, hooks: Hooks = NO_HOOKS
) -> int:
    """Fail runs whose worker vanished (lease expired), scheduling their next attempt as
    the task's retry strategy says, cancel tasks past a CancellationPolicy deadline
    that no claim or heartbeat would notice (in any queue), and spawn the due slots of
    cron schedules (any queue; `hooks.before_spawn` runs for each slot's task). Returns
    how many runs were reaped (deadlines not counted). A run whose own data breaks its
    reaping fails its task for good (UnprocessableTask) and the pass goes on."""
    await _enforce_deadlines(store, limit)
    await schedule_pass(store, hooks)
    reaped = 0
    for row in await store.expired_runs(queues, limit):
        try:
            state = await _reap(store, row)
        except RETRYABLE_IO:
            raise
        except ConfigurationError:
            raise
        except Exception as ex:  # noqa: BLE001 - one row must not stop the pass
            state = await _reap_poisoned(store, row, ex)
        reaped += state is not None
    return reaped


def _lease_expired(attempt: int) -> dict[str, Any]:
    return {
        "type": "LeaseExpired",
        "message": "the worker running this attempt stopped heartbeating",
        "retryable": True,
        "attempt": attempt,
    }


async def _reap(store: Store, row: ExpiredRun) -> str | None:
    decision = decide_failure(
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        retryable=True,
        strategy=retry_strategy(row.retry),
        rand=random.random(),
    )
    state = await store.fail(
        row.run_id,
        None,
        _serde.dumps(_lease_expired(row.attempt)),
        retry=decision.retry,
        delay=decision.delay,
        new_run_id=uuid7(),
    )
    what = _attempt(row.task_name, row.task_id, row.attempt, row.max_attempts)
    fields = _expired_fields(row)
    if state == "pending":
        log.warning(
            "%s: its worker stopped heartbeating (lease expired); retrying in %.3g s",
            what,
            decision.delay,
            extra=fields,
        )
    elif state == "failed":
        log.error(
            "%s: its worker stopped heartbeating (lease expired); no attempts left",
            what,
            extra=fields,
        )
    return state


def _attempt(task_name: str, task_id: UUID, attempt: int, max_attempts: int) -> str:
    """How a log line names an attempt of a task."""
    return f"task {task_name!r} {task_id} attempt {attempt}/{max_attempts}"


def _expired_fields(row: ExpiredRun) -> dict[str, Any]:
    return run_fields(row.task_id, row.run_id, row.task_name, row.queue, row.attempt)


async def _reap_poisoned(store: Store, row: ExpiredRun, ex: Exception) -> str | None:
    """Fail for good the task of an expired run that could not be reaped (its retry
    strategy unreadable, its retry time out of range): every pass would fail the same."""
    shown = _failures.database_error(ex) if isinstance(ex, psycopg.Error) else _failures.summary(ex)
    why = f"the lease of attempt {row.attempt} expired and its retry could not be recorded"
    why += f" ({shown})"
    fields = _expired_fields(row)
    log.error("run %s of task %s: %s; failing the task", row.run_id, row.task_id, why, extra=fields)
    error = _failures.unprocessable(
        why, stage="reap", attempt=row.attempt, cause=_lease_expired(row.attempt)
    )
    try:
        return await store.fail_for_good(row.run_id, None, error)
    except RETRYABLE_IO:
        raise
    except Exception as again:  # noqa: BLE001 - skipped: the next pass tries again
        log.error("run %s: could not fail its task either (%s)", row.run_id, again, extra=fields)
        return None


async def _call_task(run: RunState, ctx: TaskContext, params: Any) -> Any:
    """The task's code for one attempt, inside the `around_run` hook when there is one."""
    hook = run.hooks.around_run
    if hook is None:
        return await run.definition.fn(ctx, params)
    async with hook(ctx):
        return await run.definition.fn(ctx, params)
