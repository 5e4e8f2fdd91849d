"""Group commit for a worker's runs: step checkpoints and completions of every run that
reached one meanwhile go to the database in one fenced statement, one round trip and one
commit, instead of one each.

A step's checkpoint is handed to the writer and the step returns at once; the run waits
for it (`Write.done`) before anything else durable happens for it: the next step's body,
a spawn, an emit, a sleep, a wait, a failure report. A task that returns right after its
last step has that checkpoint written in the same transaction as its completion. Writes of
one run keep their order: batches are written one at a time, first come first written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING
from uuid import UUID

import attrs
import psycopg
import trio

from ._errors import DatabaseUnavailable
from ._store import Store

if TYPE_CHECKING:
    from ._worker import RunState

__all__ = ["Write", "Writer"]

log = logging.getLogger("durable_trio.worker")

# Retried as a whole: the transaction rolled back and may succeed when run again.
TRANSIENT = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


@attrs.define(eq=False)
class Write:
    """A checkpoint (``name`` set) or a completion (``name`` None) of one run."""

    run: RunState
    name: str | None
    value: str
    done: trio.Event = attrs.field(factory=trio.Event)
    owned: bool = False  # set with `done`: written, because the worker still owned the run


class Writer:
    """Writes queued `Write`s in batches. Run `run()` in a nursery that outlives the runs."""

    def __init__(
        self, store: Store, worker_id: str, *, max_batch: int = 500, max_bytes: int = 8 << 20
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._max_batch = max_batch
        self._max_bytes = max_bytes  # a jsonb value must stay far below its 255 MB limit
        self._queue: list[Write] = []
        self._wake = trio.Event()
        self._in_flight = 0
        self.batches = 0

    @property
    def pending(self) -> int:
        """Writes queued or being written."""
        return len(self._queue) + self._in_flight

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
        try:
            owned = await self._write_retrying(batch)
        except Exception:
            # A bug or an unexpected database error: write run by run, so one bad run
            # cannot take down the others.
            log.exception("worker %s: batched write failed; writing run by run", self._worker_id)
            owned = await self._write_singly(batch)
        self.batches += 1
        for write in batch:
            write.owned = write.run.run_id in owned
            write.done.set()

    async def _write_retrying(self, batch: Sequence[Write]) -> set[UUID]:
        delay = 0.05
        while True:
            live = [w for w in batch if w.run.lost is None]
            if not live:
                return set()
            try:
                return await self._record(live)
            except (DatabaseUnavailable, *TRANSIENT) as ex:
                now = time.monotonic()
                for write in live:
                    if now + delay >= write.run.lease_deadline:
                        write.run.lose(f"database unreachable until the lease ran out ({ex})")
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _write_singly(self, batch: Sequence[Write]) -> set[UUID]:
        owned: set[UUID] = set()
        runs = {w.run.run_id: w.run for w in batch}
        for run_id, run in runs.items():
            try:
                owned |= await self._write_retrying([w for w in batch if w.run is run])
            except Exception:
                log.exception("run %s: could not record its outcome; abandoning it", run_id)
                run.lose("internal error while recording the outcome")
        return owned

    async def _record(self, writes: Sequence[Write]) -> set[UUID]:
        checkpoints = [(w.run.run_id, w.name, w.value) for w in writes if w.name is not None]
        completions = [(w.run.run_id, w.value) for w in writes if w.name is None]
        claims = {w.run.run_id: w.run.claimed_at for w in writes}
        return await self._store.record(self._worker_id, checkpoints, completions, claims)
