"""A claimed run's life on its worker: one state, one table of legal moves."""

from __future__ import annotations

import itertools

import pytest

from durable_trio._core.lifecycle import (
    FINAL,
    TRANSITIONS,
    IllegalRunTransition,
    RunEvent,
    RunPhase,
    advance,
)

P = RunPhase
E = RunEvent

# What a run whose code runs (or whose failure or wait is being recorded) may do next.
_RUNNING = {
    E.RECORD_WAIT: P.ENDING,
    E.WAIT_MET: P.EXECUTING,
    E.SUSPEND: P.SUSPENDED,
    E.RECORD_FAILURE: P.ENDING,
    E.COMPLETE: P.COMPLETING,
    E.HAND_BACK: P.HANDING_BACK,
    E.LOSE: P.LOST,
    E.FINISH: P.FINISHED,
}

# The whole table, written out independently of the code: a change to either side fails.
EXPECTED: dict[tuple[RunPhase, RunEvent], RunPhase] = {
    **{(P.EXECUTING, e): t for e, t in _RUNNING.items()},
    **{(P.ENDING, e): t for e, t in _RUNNING.items()},
    (P.COMPLETING, E.HAND_BACK): P.COMPLETING,
    (P.COMPLETING, E.LOSE): P.LOST,
    (P.COMPLETING, E.FINISH): P.FINISHED,
    (P.HANDING_BACK, E.RECORD_WAIT): P.HANDING_BACK,
    (P.HANDING_BACK, E.WAIT_MET): P.HANDING_BACK,
    (P.HANDING_BACK, E.SUSPEND): P.SUSPENDED,
    (P.HANDING_BACK, E.RECORD_FAILURE): P.HANDING_BACK,
    (P.HANDING_BACK, E.COMPLETE): P.COMPLETING,
    (P.HANDING_BACK, E.HAND_BACK): P.HANDING_BACK,
    (P.HANDING_BACK, E.LOSE): P.LOST,
    (P.HANDING_BACK, E.FINISH): P.FINISHED,
    **{(P.SUSPENDED, e): P.SUSPENDED for e in RunEvent},
    **{(P.LOST, e): P.LOST for e in RunEvent},
    (P.FINISHED, E.LOSE): P.FINISHED,
}

ILLEGAL = [pair for pair in itertools.product(RunPhase, RunEvent) if pair not in EXPECTED]


def test_every_state_has_an_entry() -> None:
    assert set(TRANSITIONS) == set(RunPhase)


def test_table_matches_the_written_out_specification() -> None:
    flat = {(s, e): t for s, moves in TRANSITIONS.items() for e, t in moves.items()}
    assert flat == EXPECTED


@pytest.mark.parametrize(("pair", "target"), list(EXPECTED.items()))
def test_legal_moves(pair: tuple[RunPhase, RunEvent], target: RunPhase) -> None:
    state, event = pair
    assert advance(state, event) is target


@pytest.mark.parametrize("pair", ILLEGAL)
def test_illegal_moves_are_refused(pair: tuple[RunPhase, RunEvent]) -> None:
    state, event = pair
    with pytest.raises(IllegalRunTransition, match=f"cannot '{event.value}' while"):
        advance(state, event)


def test_what_is_refused() -> None:
    # Code reporting after it returned its result, or anything after the end but a late
    # loss: only a bug does that.
    refused = {(s, e) for s, e in ILLEGAL}
    assert {s for s, _ in refused} == {P.COMPLETING, P.FINISHED}
    assert {e for s, e in refused if s is P.COMPLETING} == {
        E.RECORD_WAIT,
        E.WAIT_MET,
        E.SUSPEND,
        E.RECORD_FAILURE,
        E.COMPLETE,
    }
    assert {e for s, e in refused if s is P.FINISHED} == set(RunEvent) - {E.LOSE}


@pytest.mark.parametrize("state", sorted(FINAL, key=lambda s: s.value))
def test_final_states_are_never_left(state: RunPhase) -> None:
    for event in RunEvent:
        try:
            assert advance(state, event) is state
        except IllegalRunTransition:
            assert state is P.FINISHED


def test_final_states() -> None:
    assert {P.SUSPENDED, P.LOST, P.FINISHED} == FINAL
    # Every non-final state can still be lost, and finished.
    for state in set(RunPhase) - FINAL:
        assert advance(state, E.LOSE) is P.LOST
        assert advance(state, E.FINISH) is P.FINISHED


def test_a_loss_stands_and_a_suspension_is_not_a_loss() -> None:
    assert advance(P.LOST, E.SUSPEND) is P.LOST
    assert advance(P.SUSPENDED, E.LOSE) is P.SUSPENDED


def test_ending_states_tolerate_a_heartbeat_that_no_longer_lists_them() -> None:
    ending = {s for s in RunPhase if s.ending}
    assert ending == {P.ENDING, P.COMPLETING, P.SUSPENDED, P.FINISHED}


def test_a_run_that_waits_and_goes_on() -> None:
    state = P.EXECUTING
    for event in (E.RECORD_WAIT, E.WAIT_MET, E.RECORD_WAIT, E.SUSPEND, E.FINISH):
        state = advance(state, event)
    assert state is P.SUSPENDED


def test_a_hand_back_survives_what_the_cancelled_code_reports() -> None:
    state = advance(P.ENDING, E.HAND_BACK)
    for event in (E.RECORD_WAIT, E.WAIT_MET, E.RECORD_FAILURE, E.HAND_BACK):
        state = advance(state, event)
    assert state is P.HANDING_BACK
    assert advance(state, E.COMPLETE) is P.COMPLETING  # nothing left to hand back
