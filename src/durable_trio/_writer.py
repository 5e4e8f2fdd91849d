"""Group commit for a worker's runs: step checkpoints and completions of every run that
reached one meanwhile go to the database in one fenced statement, one round trip and one
commit, instead of one each.

A step's checkpoint is handed to the writer and the step returns at once; the run waits
for it (`Write.done`) before anything else durable happens for it: the next step's body,
a spawn, an emit, a sleep, a wait, a failure report. A task that returns right after its
last step has that checkpoint written in the same transaction as its completion. Writes of
one run keep their order: batches are written one at a time, first come first written.

A writer given a `Claimer` (the worker) also claims runs for the worker's free slots in
the same round trip and transaction as each batch, so a run's completion and the claim of
the run that takes its slot cost one round trip and one commit between them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol
from uuid import UUID

import trio

from . import _failures
from ._core.backoff import gives_up
from ._db import TRANSIENT
from ._errors import DatabaseUnavailable
from ._retrying import retrying
from ._rows import ClaimedRun
from ._run import RunState, Write
from ._store import ClaimArgs, Store

__all__ = ["Claimer", "Write", "Writer"]

log = logging.getLogger("durable_trio.worker")


class Claimer(Protocol):
    """The worker, as a writer claiming on its behalf sees it."""

    def reserve_claim(self) -> ClaimArgs | None:
        """What to claim for the free slots, reserved until `claimed`; None: nothing."""

    def claim_wanted(self) -> bool:
        """Whether a reserved claim should still be made (False once shutting down)."""

    def claimed(self, args: ClaimArgs, rows: list[ClaimedRun]) -> None:
        """The rows claimed for a reservation (none if the claim was not made)."""


class Writer:
    """Writes queued `Write`s in batches. Run `run()` in a nursery that outlives the runs."""

    def __init__(
        self,
        store: Store,
        worker_id: str,
        *,
        claimer: Claimer | None = None,
        max_batch: int = 500,
        max_bytes: int = 8 << 20,
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._claimer = claimer
        self._max_batch = max_batch
        self._max_bytes = max_bytes  # a jsonb value must stay far below its 255 MB limit
        self._queue: list[Write] = []
        self._wake = trio.Event()
        self._in_flight = 0
        self._claim: ClaimArgs | None = None  # reserved for the batch in flight
        self.batches = 0
        self.claims = 0  # runs claimed along with a batch

    @property
    def pending(self) -> int:
        """Writes queued or being written."""
        return len(self._queue) + self._in_flight

    @property
    def about_to_write(self) -> bool:
        """Writes are queued and no batch is in flight: the next one starts at once (and
        claims for the worker's free slots as it goes)."""
        return bool(self._queue) and not self._in_flight

    def submit(self, run: RunState, name: str | None, value: str) -> Write:
        write = Write(run, name, value)
        run.last_write = write
        self._queue.append(write)
        self._wake.set()
        return write

    async def run(self) -> None:
        while True:
            if not self._queue:
                self._wake = trio.Event()
                await self._wake.wait()
            batch = self._next_batch()
            self._in_flight = len(batch)
            try:
                await self._write(batch)
            finally:
                self._in_flight = 0

    def _next_batch(self) -> list[Write]:
        """The oldest writes, up to max_batch of them and max_bytes of values (one at least)."""
        size = taken = 0
        for write in self._queue[: self._max_batch]:
            size += len(write.value)
            if taken and size > self._max_bytes:
                break
            taken += 1
        batch = self._queue[:taken]
        del self._queue[:taken]
        return batch

    async def _write(self, batch: list[Write]) -> None:
        self._claim = self._claimer.reserve_claim() if self._claimer is not None else None
        rows: list[ClaimedRun] = []
        try:
            try:
                owned, rows = await self._write_retrying(batch)
            except Exception:
                # A bug or an unexpected database error: write run by run, so one bad
                # run cannot take down the others.
                log.exception(
                    "worker %s: batched write failed; writing run by run", self._worker_id
                )
                self._settle_claim([])
                owned = await self._write_singly(batch)
        finally:
            self._settle_claim(rows)
        self.batches += 1
        written = time.monotonic()
        for write in batch:
            write.owned = write.run.run_id in owned
            write.written = written
            write.done.set()

    def _settle_claim(self, rows: list[ClaimedRun]) -> None:
        """Hand the claimed rows to the worker, ending the reservation (if still open)."""
        claim, self._claim = self._claim, None
        if claim is not None and self._claimer is not None:
            self.claims += len(rows)
            self._claimer.claimed(claim, rows)

    async def _write_retrying(self, batch: Sequence[Write]) -> tuple[set[UUID], list[ClaimedRun]]:
        """Write `batch` (and the reserved claim), retrying while the database is away;
        a run whose lease runs out meanwhile is lost, and its writes left out."""
        live: list[Write] = []

        async def attempt() -> tuple[set[UUID], list[ClaimedRun]]:
            nonlocal live
            live = [w for w in batch if w.run.lost is None]
            if self._claimer is not None and not self._claimer.claim_wanted():
                self._settle_claim([])  # shutting down: the writes alone
            if not live and self._claim is None:
                return set(), []
            return await self._record(live, self._claim)

        async def lose_expired(ex: BaseException, pause: float) -> None:
            now = time.monotonic()
            for write in live:
                if gives_up(now=now, delay=pause, deadline=write.run.lease_deadline):
                    write.run.lose(f"database unreachable until the lease ran out ({ex})")

        return await retrying(
            attempt, retry_on=(DatabaseUnavailable, *TRANSIENT), on_retry=lose_expired
        )

    async def _write_singly(self, batch: Sequence[Write]) -> set[UUID]:
        owned: set[UUID] = set()
        runs = {w.run.run_id: w.run for w in batch}
        for run in runs.values():
            try:
                owned |= (await self._write_retrying([w for w in batch if w.run is run]))[0]
            except Exception as ex:  # noqa: BLE001 - one run must not sink the others
                await self._fail_unwritable(run, ex)
        return owned

    async def _fail_unwritable(self, run: RunState, ex: Exception) -> None:
        """A run whose writes fail on their own: written again they would fail again, so
        its task fails for good (UnprocessableTask), saying why. If even that cannot be
        written the run is abandoned: its lease expires and the reaper retries it."""
        why = f"its checkpoint or result could not be recorded ({_failures.database_error(ex)})"
        log.error(
            "run %s of task %s: %s; failing the task",
            run.run_id,
            run.task_id,
            why,
            exc_info=ex,
            extra=run.log_fields(),
        )
        error = _failures.unprocessable(why, stage="record", attempt=run.attempt)
        try:
            state = await self._store.fail_for_good(run.run_id, self._worker_id, error)
        except Exception:  # the reaper is the last resort
            log.exception(
                "run %s: could not fail its task either; abandoning it",
                run.run_id,
                extra=run.log_fields(),
            )
            run.lose("internal error while recording the outcome")
            return
        run.lose(f"task failed: {why}" if state is not None else "failure report was fenced")

    async def _record(
        self, writes: Sequence[Write], claim: ClaimArgs | None
    ) -> tuple[set[UUID], list[ClaimedRun]]:
        checkpoints = [(w.run.run_id, w.name, w.value) for w in writes if w.name is not None]
        completions = [(w.run.run_id, w.value) for w in writes if w.name is None]
        claims = {w.run.run_id: w.run.claimed_at for w in writes}
        if claim is None:
            owned = await self._store.record(self._worker_id, checkpoints, completions, claims)
            return owned, []
        return await self._store.record_and_claim(
            self._worker_id, checkpoints, completions, claims, claim
        )
