"""The life of a claimed run on the worker that holds it: one state, one table of moves.

Everything the worker, its writer and the TaskContext learn about a run they hold goes
through `advance`, so what may happen next is read from one place: the state. This is the
worker's view of a run it claimed; the stored task and run states are `states`.

Trio tasks inside a task's code (a nursery) report concurrently, and code keeps running
while it unwinds, so the table is lenient where that happens: `SUSPENDED` and `LOST` take
every event and stay as they are (their outcome stands, whatever the unwinding code still
reports). It refuses what only a bug could do: code reporting after it returned its
result (`COMPLETING`), or anything but a late loss once the execution ended (`FINISHED`).
"""

from __future__ import annotations

import enum

__all__ = [
    "FINAL",
    "TRANSITIONS",
    "IllegalRunTransition",
    "RunEvent",
    "RunPhase",
    "advance",
]


class RunPhase(enum.Enum):
    EXECUTING = "executing"  # its code runs
    ENDING = "ending"  # its failure, or a wait (sleep, event, join), is being recorded
    COMPLETING = "completing"  # its code returned: the completion is queued or being written
    HANDING_BACK = "handing back"  # asked to stop: released when it exits, unless it ends first
    SUSPENDED = "suspended"  # its wait is recorded: its code unwinds
    LOST = "lost"  # abandoned: nothing more is written for it
    FINISHED = "finished"  # its execution ended while it was still held

    @property
    def ending(self) -> bool:
        """A heartbeat that no longer lists the run does not mean it was lost: its own
        write (completion, failure, suspension) may have ended it meanwhile."""
        return self in _ENDED_BY_ITS_OWN_WRITE


class RunEvent(enum.Enum):
    RECORD_WAIT = "record wait"  # a sleep, event wait or join is about to be recorded
    WAIT_MET = "wait met"  # that wait was met at once: the code goes on
    SUSPEND = "suspend"  # the wait is recorded: the code unwinds with Suspended
    RECORD_FAILURE = "record failure"  # the attempt failed: its failure is being recorded
    COMPLETE = "complete"  # the code returned: its completion is queued
    HAND_BACK = "hand back"  # graceful stop, or a cancelled worker: release it at exit
    LOSE = "lose"  # fenced, cancelled, or its lease ran out: write nothing more
    FINISH = "finish"  # its execution ended


P = RunPhase
E = RunEvent

_ENDED_BY_ITS_OWN_WRITE = frozenset({P.ENDING, P.COMPLETING, P.SUSPENDED, P.FINISHED})
# The outcome stands: a late event changes nothing.
FINAL = frozenset({P.SUSPENDED, P.LOST, P.FINISHED})

_RUNNING: dict[RunEvent, RunPhase] = {
    E.RECORD_WAIT: P.ENDING,
    # A sibling trio task's wait may be met, or recorded, while another one's is pending.
    E.WAIT_MET: P.EXECUTING,
    E.SUSPEND: P.SUSPENDED,
    E.RECORD_FAILURE: P.ENDING,
    E.COMPLETE: P.COMPLETING,
    E.HAND_BACK: P.HANDING_BACK,
    E.LOSE: P.LOST,
    E.FINISH: P.FINISHED,
}

TRANSITIONS: dict[RunPhase, dict[RunEvent, RunPhase]] = {
    P.EXECUTING: _RUNNING,
    # A task may catch the error of a wait (or of its recording) and go on, or return.
    P.ENDING: _RUNNING,
    # Its code returned: nothing is left to hand back, its completion is written or not.
    P.COMPLETING: {E.HAND_BACK: P.COMPLETING, E.LOSE: P.LOST, E.FINISH: P.FINISHED},
    # Asked to stop, its code is cancelled: what it still reports does not cancel the
    # hand-back, unless the run suspends, completes (nothing left to hand back) or is lost.
    P.HANDING_BACK: {
        E.RECORD_WAIT: P.HANDING_BACK,
        E.WAIT_MET: P.HANDING_BACK,
        E.SUSPEND: P.SUSPENDED,
        E.RECORD_FAILURE: P.HANDING_BACK,
        E.COMPLETE: P.COMPLETING,
        E.HAND_BACK: P.HANDING_BACK,
        E.LOSE: P.LOST,
        E.FINISH: P.FINISHED,
    },
    P.SUSPENDED: dict.fromkeys(RunEvent, P.SUSPENDED),
    P.LOST: dict.fromkeys(RunEvent, P.LOST),
    # A heartbeat or the writer may still find it lost: too late to matter.
    P.FINISHED: {E.LOSE: P.FINISHED},
}


class IllegalRunTransition(Exception):
    """A run was told of an event its lifecycle does not allow: a bug in durable_trio,
    never a user error (the worker logs it and abandons the run to its lease)."""


def advance(phase: RunPhase, event: RunEvent) -> RunPhase:
    """The run's phase after `event`, or `IllegalRunTransition`."""
    try:
        return TRANSITIONS[phase][event]
    except KeyError:
        raise IllegalRunTransition(f"a run cannot {event.value!r} while {phase.value!r}") from None
