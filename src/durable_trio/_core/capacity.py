"""A worker's capacity: which runs hold its slots, how many it may claim, which queue it
claims from first. Bookkeeping only; the worker does the claiming."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Generic, TypeVar

import attrs

__all__ = ["QueueRotation", "Slots"]

H = TypeVar("H", bound=Hashable)  # a run, told apart by identity


@attrs.define
class Slots(Generic[H]):
    """The concurrency limit counts runs whose code is executing. A run whose completion
    is being written no longer holds a slot, so the next claim overlaps that write; the
    runs in hand (executing, held or still writing) are capped at twice the limit plus
    ``prefetch``.

    With ``prefetch`` (`WorkerOptions.prefetch`), a claim may take up to that many runs
    beyond the free slots: they are held, first claimed first, and take slots as they
    free (`promote`)."""

    concurrency: int
    prefetch: int = 0
    _holders: set[H] = attrs.field(factory=set, init=False)
    # Held runs in claim order (a dict: ordered, and removal by identity in O(1)).
    _held: dict[H, None] = attrs.field(factory=dict, init=False)
    reserved: int = attrs.field(default=0, init=False)  # promised to a claim in flight

    @property
    def executing(self) -> int:
        return len(self._holders)

    @property
    def held(self) -> int:
        return len(self._held)

    def occupy(self, run: H) -> None:
        self._holders.add(run)

    def place(self, run: H) -> bool:
        """A run just claimed: True if it takes a slot now, False if it is held. Without
        prefetch it always takes one (claims take free slots only); with it, only when a
        slot is free and no run claimed before it waits."""
        if self.prefetch == 0 or (not self._held and self.executing < self.concurrency):
            self._holders.add(run)
            return True
        self._held[run] = None
        return False

    def promote(self) -> list[H]:
        """Held runs that take the slots free now, first claimed first."""
        started = []
        while self._held and self.executing < self.concurrency:
            run = next(iter(self._held))
            del self._held[run]
            self._holders.add(run)
            started.append(run)
        return started

    def is_held(self, run: H) -> bool:
        return run in self._held

    def held_runs(self) -> list[H]:
        return list(self._held)

    def drop(self, run: H) -> bool:
        """Forget a held run that ended without taking a slot; False if it was not held."""
        if run not in self._held:
            return False
        del self._held[run]
        return True

    def vacate(self, run: H) -> bool:
        """Free `run`'s slot; False if it held none (its code returned earlier)."""
        if run not in self._holders:
            return False
        self._holders.remove(run)
        return True

    def holds(self, run: H) -> bool:
        """Whether `run`'s code still holds a slot (it has not returned its result)."""
        return run in self._holders

    def free(self, in_hand: int) -> int:
        """How many runs may be claimed now, `in_hand` runs being held (may be <= 0)."""
        ahead = self.concurrency + self.prefetch
        room = min(ahead - self.executing - self.held, ahead + self.concurrency - in_hand)
        return room - self.reserved

    def may_claim(self) -> bool:
        """Whether a claim may start while another is in flight. With prefetch, no: two
        claims answering out of order would hold a run of lower priority before one of
        higher, and held runs start in the order they were claimed."""
        return self.prefetch == 0 or self.reserved == 0

    def claim_with_writes(self, in_hand: int) -> bool:
        """Claim along with the writer's next batch? Only when the worker's one run is
        finishing: nothing then overlaps the claim, and merging it with the completion
        saves a round trip and a commit (c=1: ~1,150 -> ~1,300 tasks/s). With more runs
        in hand, a claim and a write side by side on two connections go faster (merged
        every time, c=64 fell from ~11k to ~6.5k tasks/s).

        With runs held, the run taking the freed slot has started by the time the
        completion is written, so the claim refilling the held runs is never waited for:
        at concurrency 1 it rides with the writer whatever is in hand."""
        if self._held:
            return self.concurrency == 1
        return self.executing == 0 and in_hand <= 1


@attrs.define
class QueueRotation:
    """A worker's queues, starting one further along at each claim, so that a busy first
    queue cannot starve the others (priority orders runs within a queue)."""

    queues: Sequence[str]
    _turn: int = attrs.field(default=0, init=False)

    def next_order(self) -> list[str]:
        if not self.queues:
            return []
        turn = self._turn % len(self.queues)
        self._turn = turn + 1
        return [*self.queues[turn:], *self.queues[:turn]]
