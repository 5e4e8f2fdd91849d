"""A worker's slot bookkeeping: how many runs it may claim, start, and when a claim rides
along with the writer's round trip. Pure arithmetic over the worker's counters.

The counters, as the worker keeps them:

- ``executing``: runs whose task code runs; at most ``concurrency``.
- ``held``: runs claimed ahead (``WorkerOptions.prefetch``) that wait for a slot.
- ``in_hand``: every run the worker holds: executing, held, or whose outcome is still
  being written (a run frees its slot when its code returns).
- ``reserved``: runs a claim in flight may still bring.
"""

from __future__ import annotations

import attrs

__all__ = ["Slots"]


@attrs.frozen
class Slots:
    """The limits of one worker: ``concurrency`` executing, ``prefetch`` held beyond."""

    concurrency: int
    prefetch: int = 0

    def claim_room(self, *, executing: int, held: int, in_hand: int, reserved: int) -> int:
        """How many more runs a claim may take now (<= 0: none).

        Executing plus held runs stay within ``concurrency + prefetch``; runs in hand,
        counting those whose outcome is being written, within ``2 * concurrency +
        prefetch``, so a slow writer cannot make the worker hoard runs."""
        ahead = self.concurrency + self.prefetch
        return min(ahead - executing - held, ahead + self.concurrency - in_hand) - reserved

    def may_claim(self, *, reserved: int) -> bool:
        """Whether a claim may start while another is in flight (``reserved`` > 0: the
        claim loop's, or one riding with the writer). With runs held, no: two claims
        answering out of order would hold a run of lower priority before one of higher,
        and held runs start in the order they were claimed."""
        return self.prefetch == 0 or reserved == 0

    def may_start(self, *, executing: int, held: int) -> bool:
        """Whether a run just claimed starts at once: a slot is free and no run claimed
        before it waits (held runs start first come, first served). Without prefetch,
        always: claims take free slots only."""
        return self.prefetch == 0 or (held == 0 and executing < self.concurrency)

    def to_start(self, *, executing: int, held: int) -> int:
        """How many held runs to start now that slots may have freed."""
        return max(0, min(held, self.concurrency - executing))

    def claim_with_writes(self, *, executing: int, held: int, in_hand: int) -> bool:
        """Claim along with the writer's next batch? Only when the worker's one running
        run is finishing: nothing then overlaps the claim, and merging it with the
        completion saves a round trip and a commit (c=1: ~1,150 -> ~1,300 tasks/s).
        With more runs in hand, a claim and a write side by side on two connections go
        faster (merged every time, c=64 fell from ~11k to ~6.5k tasks/s).

        With runs held, the run that takes the freed slot is already started when the
        completion is written, so the claim that refills the held runs is never waited
        for: at ``concurrency`` 1 it rides with the writer too, whatever is held."""
        if held == 0:
            return executing == 0 and in_hand <= 1
        return self.concurrency == 1

    def batch(self, batch_size: int | None) -> int:
        """Most runs claimed in one statement: ``batch_size``, else all that fit."""
        return batch_size or self.concurrency + self.prefetch
