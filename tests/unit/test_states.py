"""The task state machine: one table of legal moves, mirrored by the SQL guards."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from durable_trio._core.states import (
    TERMINAL,
    TRANSITIONS,
    Event,
    IllegalTransition,
    TaskState,
    sources,
    transition,
)

S = TaskState
E = Event

# The whole table, written out independently of the code: a change to either side fails.
EXPECTED: dict[tuple[TaskState, Event], TaskState] = {
    (S.PENDING, E.CLAIM): S.RUNNING,
    (S.PENDING, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.SUSPEND): S.SLEEPING,
    (S.RUNNING, E.COMPLETE): S.COMPLETED,
    (S.RUNNING, E.RETRY): S.PENDING,
    (S.RUNNING, E.FAIL): S.FAILED,
    (S.RUNNING, E.RELEASE): S.PENDING,
    (S.RUNNING, E.CANCEL): S.CANCELLED,
    (S.SLEEPING, E.WAKE): S.PENDING,
    (S.SLEEPING, E.CLAIM): S.RUNNING,
    (S.SLEEPING, E.CANCEL): S.CANCELLED,
}

ALL_PAIRS = list(itertools.product(TaskState, Event))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in EXPECTED]


def test_every_state_has_an_entry() -> None:
    assert set(TRANSITIONS) == set(TaskState)


def test_table_matches_the_written_out_specification() -> None:
    flat = {(s, e): t for s, moves in TRANSITIONS.items() for e, t in moves.items()}
    assert flat == EXPECTED


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_have_no_moves(state: TaskState) -> None:
    assert TRANSITIONS[state] == {}
    for event in Event:
        with pytest.raises(IllegalTransition):
            transition(state, event)


def test_terminal_property() -> None:
    assert {s for s in TaskState if s.terminal} == {S.COMPLETED, S.FAILED, S.CANCELLED}
    assert {S.COMPLETED, S.FAILED, S.CANCELLED} == TERMINAL
    for state in (S.PENDING, S.RUNNING, S.SLEEPING):
        assert state.terminal is False
    for state in TERMINAL:
        assert state.terminal is True


def test_non_terminal_states_all_have_moves_and_can_be_cancelled() -> None:
    for state in TaskState:
        if not state.terminal:
            assert TRANSITIONS[state], state
            assert transition(state, E.CANCEL) is S.CANCELLED


@pytest.mark.parametrize(("pair", "target"), list(EXPECTED.items()))
def test_legal_moves(pair: tuple[TaskState, Event], target: TaskState) -> None:
    state, event = pair
    assert transition(state, event) is target


@pytest.mark.parametrize(("state", "event"), ILLEGAL)
def test_illegal_moves_raise(state: TaskState, event: Event) -> None:
    with pytest.raises(IllegalTransition) as info:
        transition(state, event)
    message = str(info.value)
    assert repr(event.value) in message
    assert repr(state.value) in message
    # Not a user error: it must not be mistaken for one (InvalidInput is a ValueError).
    assert not isinstance(info.value, ValueError)


def test_illegal_examples() -> None:
    # A few moves that would be real bugs if the table allowed them.
    for state, event in [
        (S.COMPLETED, E.CLAIM),
        (S.PENDING, E.COMPLETE),
        (S.SLEEPING, E.COMPLETE),
        (S.PENDING, E.SUSPEND),
        (S.FAILED, E.RETRY),
        (S.CANCELLED, E.CANCEL),
        (S.RUNNING, E.CLAIM),
        (S.RUNNING, E.WAKE),
    ]:
        with pytest.raises(IllegalTransition):
            transition(state, event)


def test_sources() -> None:
    assert sources(E.CLAIM) == {S.PENDING, S.SLEEPING}
    assert sources(E.CANCEL) == {S.PENDING, S.RUNNING, S.SLEEPING}
    assert sources(E.WAKE) == {S.SLEEPING}
    for event in (E.SUSPEND, E.COMPLETE, E.RETRY, E.FAIL, E.RELEASE):
        assert sources(event) == {S.RUNNING}, event
    assert isinstance(sources(E.CLAIM), frozenset)


def test_sources_agrees_with_transition() -> None:
    for event in Event:
        legal = set()
        for state in TaskState:
            try:
                transition(state, event)
            except IllegalTransition:
                continue
            legal.add(state)
        assert sources(event) == legal
        # No event is legal from a terminal state, and every event is legal somewhere.
        assert legal
        assert not legal & TERMINAL


def test_every_non_terminal_state_can_reach_every_terminal_state() -> None:
    for start in TaskState:
        if start.terminal:
            continue
        seen = {start}
        frontier = [start]
        while frontier:
            state = frontier.pop()
            for nxt in TRANSITIONS[state].values():
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        assert seen >= TERMINAL, start


def test_enum_values_are_the_stored_strings() -> None:
    assert [s.value for s in TaskState] == [
        "pending",
        "running",
        "sleeping",
        "completed",
        "failed",
        "cancelled",
    ]
    assert TaskState("sleeping") is S.SLEEPING
    assert S.RUNNING == "running"  # StrEnum: compares equal to the column value


# -- the SQL guards list the same states as the table -------------------------------------

SQL = Path(__file__).resolve().parents[2] / "sql"


def _sql() -> str:
    files = sorted(SQL.glob("migrations/*.sql")) + sorted(SQL.glob("functions/*.sql"))
    assert files, f"no SQL files found in {SQL}"
    return "\n".join(f.read_text() for f in files)


def _functions() -> dict[str, str]:
    """Body of the last definition of each SQL function."""
    pattern = re.compile(
        r"CREATE (?:OR REPLACE )?FUNCTION @schema\.(\w+)\s*\(.*?\$\$(.*?)\$\$", re.DOTALL
    )
    return {m.group(1): m.group(2) for m in pattern.finditer(_sql())}


def _state_list(text: str) -> set[str]:
    return set(re.findall(r"'(\w+)'", text))


def test_sql_check_constraints_list_every_state() -> None:
    checks = re.findall(r"state text NOT NULL CHECK \(state IN\s*\(([^)]*)\)\)", _sql())
    assert len(checks) >= 2  # tasks and runs
    for check in checks:
        assert _state_list(check) == {s.value for s in TaskState}


def test_sql_claim_guard_matches_sources_of_claim() -> None:
    body = _functions()["claim_runs"]
    guard = re.search(r"c\.state IN \(([^)]*)\)", body)
    assert guard is not None
    assert _state_list(guard.group(1)) == {s.value for s in sources(E.CLAIM)}


def test_sql_cancel_guards_match_sources_of_cancel() -> None:
    body = _functions()["cancel_task"]
    live = re.search(r"AND state IN \(([^)]*)\)", body)
    assert live is not None
    assert _state_list(live.group(1)) == {s.value for s in sources(E.CANCEL)}
    finished = re.search(r"state NOT IN \(([^)]*)\)", body)
    assert finished is not None
    assert _state_list(finished.group(1)) == {s.value for s in TERMINAL}


def test_sql_worker_writes_are_fenced_to_running_runs() -> None:
    functions = _functions()
    fence = functions["lock_owned_run"]
    lease = functions["holds_lease"]  # the one statement of the fence, inlined by callers
    assert _state_list(" ".join(re.findall(r"state = '\w+'", lease))) == {S.RUNNING.value}
    # complete / suspend / release / fail (worker side) all go through the fence, which
    # only admits the states from which those events are legal.
    # record_runs (checkpoints and completions, batched) fences many runs in one statement
    # with the same conditions as lock_owned_run.
    batch = functions["record_runs"]
    for condition in ("holds_lease(r.worker_id, r.state, r.lease_expires_at", "FOR NO KEY UPDATE"):
        assert condition in batch, condition
    assert "holds_lease(" in fence
    for condition in ("p_owner = p_worker", "p_state = 'running'", "p_lease_expires_at > p_now"):
        assert condition in lease, condition
    assert sources(E.COMPLETE) == {S.RUNNING}
    for name, event in [
        ("suspend_run", E.SUSPEND),
        ("release_run", E.RELEASE),
        ("fail_run", E.FAIL),
        ("fail_run", E.RETRY),
    ]:
        assert "lock_owned_run(" in functions[name], name
        assert sources(event) == {S.RUNNING}
