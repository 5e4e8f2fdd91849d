"""A worker's capacity: which runs hold its slots, how many it may claim, which queue it
claims from first. Bookkeeping only; the worker does the claiming."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import attrs

__all__ = ["QueueRotation", "Slots"]


@attrs.define
class Slots:
    """The concurrency limit counts runs whose code is executing. A run whose completion
    is being written no longer holds a slot, so the next claim overlaps that write; the
    runs in hand (executing or still writing) are capped at twice the limit."""

    concurrency: int
    _holders: set[Hashable] = attrs.field(factory=set, init=False)
    reserved: int = attrs.field(default=0, init=False)  # promised to a claim in flight

    @property
    def executing(self) -> int:
        return len(self._holders)

    def occupy(self, run: Hashable) -> None:
        self._holders.add(run)

    def vacate(self, run: Hashable) -> bool:
        """Free `run`'s slot; False if it held none (its code returned earlier)."""
        if run not in self._holders:
            return False
        self._holders.remove(run)
        return True

    def holds(self, run: Hashable) -> bool:
        """Whether `run`'s code still holds a slot (it has not returned its result)."""
        return run in self._holders

    def free(self, in_hand: int) -> int:
        """How many runs may be claimed now, `in_hand` runs being held (may be <= 0)."""
        limit = self.concurrency
        return min(limit - self.executing, 2 * limit - in_hand) - self.reserved

    def claim_with_writes(self, in_hand: int) -> bool:
        """Claim along with the writer's next batch? Only when the worker's one run is
        finishing: nothing then overlaps the claim, and merging it with the completion
        saves a round trip and a commit (c=1: ~1,150 -> ~1,300 tasks/s). With more runs
        in hand, a claim and a write side by side on two connections go faster (merged
        every time, c=64 fell from ~11k to ~6.5k tasks/s)."""
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
