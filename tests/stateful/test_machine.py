"""A Hypothesis state machine driving the real library against the real Postgres, beside a
small pure model, checking the invariants of docs/architecture.md after every rule.

Shape
-----
Rules are synchronous. They reach trio through a `Portal`: one trio loop in a helper
thread, called with ``trio.from_thread.run(..., trio_token=...)``. The client (its pool),
and a "zombie" worker that outlives the rule that stalled it, live in the portal's
nursery between rules. Every example gets a fresh schema.

One generic task (`_make_task`) runs 1-4 steps. Step ``i`` may first await an event (with
or without a timeout) and/or sleep durably; then runs a ``ctx.step`` (which records the
attempt that first ran it); then may raise (failure points chosen per attempt, before or
after the step's transaction, retryable or `NonRetryable`); and writes one row into a
ledger table through ``ctx.transaction`` (the same transaction as the checkpoint, so the
ledger counts committed executions). The step's output records the attempt that
committed it, the ``ctx.step`` value and the event outcome it saw. Spawns may be delayed;
retries are immediate or fixed.

The model (`TState`, `run_attempt`, `trace`, `settle`, `reachable`) mirrors what the
database shows for one task: state, attempts, which attempt committed each step, event and
``ctx.step`` checkpoints, sleep wake times, the waits row, when a run becomes claimable,
its lease, the last error. Time is virtual: the sum of `advance_clock` calls. Every
duration is a multiple of 100 s, so a database timestamp maps back to one virtual instant
however slowly the test runs; leases (300 s) are shorter than the smallest advance.

- Exact rules (spawn, emit, cancel, advance, run until idle, release a stalled worker):
  the model predicts every task's database state, which must match exactly.
- Observational rules (a worker claims k runs then shuts down gracefully; a worker
  crashes when a step reaches a gate, before or inside its transaction; a worker stalls
  at such a gate and lives on as a zombie): which tasks progress how far depends on
  scheduling, so each task's observed state must be one the model can reach from where it
  was (the stalled / crashed task exactly at its gate); the model then adopts it.
- When a worker rule finds nothing due, it first "nudges" (advances the clock to the next
  due run, or emits an awaited event; shown as a note), so few steps are wasted.

Invariants (after every rule): a committed step never runs again (at most one ledger row
per (task, step), each matching the step's checkpoint); attempts <= max_attempts; at most
one live run and at most one 'running' run per task, owned by a worker with a lease; runs
mirror their task; only expected checkpoints exist. A zombie whose lease expired writes
nothing (its writes are fenced) and, told of a cancellation, stops its attempt through
the cancel scope. At teardown every event is emitted and the clock is advanced until
nothing changes: every task must be terminal, completed ones with the model's result,
cancelled ones without ledger writes after their cancellation. The test then checks that
no thread and no database connection was leaked.

Beside the generic tasks, on a second queue ("side") with checks of their own: task
trees (a node spawns and joins its children, may fail before or after the joins, may
wait for an event; a rule cancels a node: it and its live descendants, nothing else) and
event races (waiters and emits of one event from several connections; one waiter is
stopped inside its await_event by a lock on its task row until every emit returned or
waits for it). On the main queue: spawns with repeated idempotency keys (same task,
nothing written) and stale heartbeats (a former owner, or a stranger, beats for a
running run: nothing renewed, the owner's lease untouched). Invariants over every task:
attempts within bounds, no live descendant under a failed or cancelled ancestor, nobody
waiting for an event that was emitted, and every failure the worker reports decided as
the retry policy says. Draws never depend on the database: numbers are drawn, then
mapped onto what exists, so failures replay and shrink to their assertion.
docs/reliability.md describes the machine and tests/stateful/seeded_bugs.py, which
checks that it catches a list of seeded bugs.

Profiles (tests/stateful/conftest.py): 100 examples x 30 steps by default,
1000 x 50 with DURABLE_THOROUGH=1.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import UUID

import attrs
import psycopg
import trio
from hypothesis import Phase, note, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg import sql
from psycopg.rows import dict_row

import durable_trio as dt
from durable_trio.testing import advance_clock, reap_expired, run_until_idle

T = TypeVar("T")

PROFILE = "stateful-thorough" if os.environ.get("DURABLE_THOROUGH") == "1" else "stateful-default"
APP_NAME = f"durable_stateful_{os.getpid()}"
TASK_NAME = "stateful_generic"
EVENTS = ("e0", "e1", "e2")
QUANTUM = 100  # every virtual duration is a multiple of this many seconds
LEASE = 300  # claim_timeout (s): heartbeats every 100 s of real time, i.e. never here
MAX_TASKS = 12
RULE_TIMEOUT = 120.0  # real seconds: a hang guard, never an assertion about speed
GONE = "gone"  # marker for "the database shows something the model cannot express"
SIDE = "side"  # the queue of task trees and event races (own workers, own checks)
NODE_NAME = "stateful_node"
WAITER_NAME = "stateful_waiter"
HOLDS = ("h0", "h1")  # events tree nodes may wait for (on the side queue)
MAX_TREES = 4
MAX_RACES = 4
KEYS = 3  # idempotency keys are drawn from this few, so they repeat
SIDE_OPTIONS = dt.SpawnOptions(max_attempts=1)
# The event race wakes its held waiter at the very instant it suspends, so its worker can
# claim the run again (same run_id) while the suspending attempt is still unwinding. That
# once crashed the worker (a KeyError from Worker._runs); now the new attempt waits for
# the old one (Worker._execute_after). By default the race stops the worker from claiming
# before it lets the waiter go; DURABLE_STATEFUL_RECLAIM=1 keeps it claiming, to exercise
# that path.
RECLAIM = os.environ.get("DURABLE_STATEFUL_RECLAIM") == "1"

# What happened how often, over the whole test (hypothesis.event only reaches the
# statistics of @given tests); written to $DURABLE_STATEFUL_REPORT when set.
STATS: Counter[str] = Counter()


def first_failure() -> None:
    """Note how many examples ran until the first failure (shrinking runs more)."""
    STATS.setdefault("first failure in example", STATS["examples (machines run)"])


def event(value: str) -> None:
    STATS[value] += 1
    hypothesis_event(value)


# -- the task and its specification ---------------------------------------------------


class BoomError(Exception):
    """A retryable failure injected at a failure point."""


@attrs.frozen
class StepSpec:
    event: str | None = None
    timeout: int | None = None
    sleep: int | None = None


@attrs.frozen
class Spec:
    steps: tuple[StepSpec, ...]
    # (attempt, step, phase, fatal): attempt `attempt` raises at step `step`, "before" or
    # "after" its transaction; fatal raises NonRetryable.
    fails: tuple[tuple[int, int, str, bool], ...]
    max_attempts: int
    retry_delay: int  # 0: RetryStrategy.none(), else RetryStrategy.fixed(retry_delay)
    delay: int = 0  # SpawnOptions.delay

    def failure(self, attempt: int, step: int, phase: str) -> bool | None:
        """None if attempt `attempt` passes this point, else whether the failure is fatal."""
        for a, s, p, fatal in self.fails:
            if (a, s, p) == (attempt, step, phase):
                return fatal
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": [[s.event, s.timeout, s.sleep] for s in self.steps],
            "fails": [list(f) for f in self.fails],
            "max_attempts": self.max_attempts,
            "retry_delay": self.retry_delay,
            "delay": self.delay,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Spec:
        return cls(
            steps=tuple(StepSpec(*s) for s in data["steps"]),
            fails=tuple((a, s, p, f) for a, s, p, f in data["fails"]),
            max_attempts=data["max_attempts"],
            retry_delay=data["retry_delay"],
            delay=data["delay"],
        )

    @property
    def n(self) -> int:
        return len(self.steps)

    def event_checkpoints(self) -> tuple[str | None, ...]:
        """Checkpoint name of each step's await_event (repeated names get #2, #3...)."""
        seen: dict[str, int] = {}
        out: list[str | None] = []
        for s in self.steps:
            if s.event is None:
                out.append(None)
                continue
            base = f"$event:{s.event}"
            seen[base] = seen.get(base, 0) + 1
            out.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
        return tuple(out)

    def options(self) -> dt.SpawnOptions:
        retry = (
            dt.RetryStrategy.none()
            if self.retry_delay == 0
            else dt.RetryStrategy.fixed(self.retry_delay)
        )
        return dt.SpawnOptions(
            max_attempts=self.max_attempts, retry=retry, delay=self.delay or None
        )


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    n = draw(st.integers(1, 4))
    steps = []
    for _ in range(n):
        awaited = draw(st.sampled_from((None,) * 9 + EVENTS))
        timeout = draw(st.sampled_from((None, 1000, 2000))) if awaited else None
        sleep = draw(st.sampled_from((None,) * 8 + (1000, 3000)))
        steps.append(StepSpec(awaited, timeout, sleep))
    max_attempts = draw(st.sampled_from((1, 2, 3, 3, 4)))
    fails = draw(
        st.lists(
            st.tuples(
                st.integers(1, max_attempts),
                st.integers(0, n - 1),
                st.sampled_from(("before", "after")),
                st.sampled_from((False, False, False, False, False, True)),
            ),
            max_size=3,
            unique_by=lambda f: f[:3],
        )
    )
    retry_delay = draw(st.sampled_from((0, 1000)))
    delay = draw(st.sampled_from((0, 0, 0, 1000)))
    return Spec(tuple(steps), tuple(sorted(fails)), max_attempts, retry_delay, delay)


@attrs.define
class Gate:
    """Blocks the first step execution that reaches a point of the armed `phase`
    ("before": before the failure check and transaction of a step, outside any
    transaction; "inside": inside the step's transaction, after the ledger insert)."""

    phase: str
    info: tuple[UUID, int, int, str] | None = None  # (task_id, attempt, step, phase)
    hit: trio.Event = attrs.field(factory=trio.Event)
    release: trio.Event = attrs.field(factory=trio.Event)
    exited: trio.Event = attrs.field(factory=trio.Event)
    cancelled: bool = False
    why: str = ""


def _make_task(m: StatefulMachine) -> dt.TaskDefinition[Any, Any]:
    insert = sql.SQL(
        "INSERT INTO {}.ledger (task_id, step, attempt, run_id) VALUES (%s, %s, %s, %s)"
    ).format(sql.Identifier(m.schema))

    def maybe_fail(spec: Spec, attempt: int, step: int, phase: str) -> None:
        fatal = spec.failure(attempt, step, phase)
        if fatal is None:
            return
        if fatal:
            raise dt.NonRetryable(f"fatal at attempt {attempt} step {step} {phase}")
        raise BoomError(f"boom at attempt {attempt} step {step} {phase}")

    @dt.task(TASK_NAME)
    async def generic(ctx: dt.TaskContext, params: Any) -> Any:
        spec = Spec.from_json(params)

        async def write(conn: Any, step: int, ev: Any, pre: int) -> Any:
            await conn.execute(insert, (ctx.task_id, step, ctx.attempt, ctx.run_id))
            await m.gate_point(ctx, step, "inside")
            return {"i": step, "a": ctx.attempt, "ev": ev, "p": pre}

        def attempt_now() -> int:
            return ctx.attempt

        out = []
        for i, step in enumerate(spec.steps):
            ev: Any = None
            if step.event is not None:
                try:
                    ev = await ctx.await_event(step.event, timeout=step.timeout)
                except dt.EventTimeout:
                    ev = "timeout"
            if step.sleep is not None:
                await ctx.sleep_for(f"z{i}", step.sleep)
            pre = await ctx.step(f"p{i}", attempt_now)  # replays return the first attempt
            await m.gate_point(ctx, i, "before")
            maybe_fail(spec, ctx.attempt, i, "before")
            out.append(await ctx.transaction(f"s{i}", write, i, ev, pre, result_type=Any))
            maybe_fail(spec, ctx.attempt, i, "after")
        return out

    return generic


# -- task trees and event races (the side queue) ---------------------------------------
#
# A tree node spawns its children (ctx.spawn), may fail at once ("early": its children
# must be cancelled with it), may wait for one of HOLDS, then joins each child in order
# (ctx.join; a child's failure or cancellation is caught and reported), may fail after
# the joins ("late"), and returns {"path", "kids": [each child's end state]}. A waiter
# awaits one event, after an optional hold point where the machine stops it just before
# its await_event (see `StatefulMachine.race`).


@st.composite
def trees(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    """A tree shape: 1-2 children under the root, up to 2 under each child, 3 levels
    (drawn without looking at the database; paths are given at spawn)."""
    kids = draw(st.integers(1 if depth == 0 else 0, 2)) if depth < 2 else 0
    return {
        "kids": [draw(trees(depth + 1)) for _ in range(kids)],
        "hold": draw(st.sampled_from((None, None, *HOLDS))),
        "fail": draw(st.sampled_from(("none", "none", "none", "none", "early", "late"))),
    }


def with_paths(tree: dict[str, Any], path: str) -> dict[str, Any]:
    return {
        **tree,
        "path": path,
        "kids": [with_paths(k, f"{path}.{i}") for i, k in enumerate(tree["kids"])],
    }


def tree_nodes(tree: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield tree
    for kid in tree["kids"]:
        yield from tree_nodes(kid)


def _make_side_tasks(m: StatefulMachine) -> list[dt.TaskDefinition[Any, Any]]:
    @dt.task(NODE_NAME, options=SIDE_OPTIONS)
    async def node(ctx: dt.TaskContext, params: Any) -> Any:
        handles = [
            await ctx.spawn(f"k{i}", node, kid, SIDE_OPTIONS)
            for i, kid in enumerate(params["kids"])
        ]
        if params["fail"] == "early":
            raise dt.NonRetryable(f"node {params['path']} fails before joining")
        if params["hold"] is not None:
            await ctx.await_event(params["hold"])
        ends = []
        for i, handle in enumerate(handles):
            try:
                await ctx.join(f"j{i}", handle)
                ends.append("completed")
            except dt.ChildFailed:
                ends.append("failed")
            except dt.ChildCancelled:
                ends.append("cancelled")
        if params["fail"] == "late":
            raise dt.NonRetryable(f"node {params['path']} fails after joining")
        return {"path": params["path"], "kids": ends}

    @dt.task(WAITER_NAME, options=SIDE_OPTIONS)
    async def waiter(ctx: dt.TaskContext, params: Any) -> Any:
        if params["held"]:
            await m.hold_point(ctx)
        return await ctx.await_event(params["event"])

    return [node, waiter]


@attrs.define
class Hold:
    """Stops one waiter's await_event half-way: the machine locks the waiter's task row
    when the waiter reaches its hold point, so its await_event blocks on that lock after
    it has looked for the event and written its (uncommitted) waits row — the window in
    which an emit that does not serialise with it loses the wake-up."""

    task_id: UUID
    reached: trio.Event = attrs.field(factory=trio.Event)
    locked: trio.Event = attrs.field(factory=trio.Event)
    release: trio.Event = attrs.field(factory=trio.Event)
    pid: int = 0


# -- the model ------------------------------------------------------------------------

# Per step event outcome: None (no checkpoint), ("p", payload) or ("t",) (timed out).
EventOutcome = tuple[Any, ...] | None


@attrs.frozen
class TState:
    """One task as the database shows it, in virtual time."""

    state: str  # pending running sleeping completed failed cancelled
    attempts: int
    commits: tuple[int, ...]  # attempt that committed step j, for each committed j
    events: tuple[EventOutcome, ...]
    wakes: tuple[int | None, ...]  # sleep checkpoints: virtual wake time
    pres: tuple[int | None, ...]  # ctx.step checkpoints: the attempt that ran the step
    wait: tuple[int, int | None, int] | None = None  # waits row: (step, deadline, attempt)
    available: int | None = None  # pending/sleeping: claimable from (None: never)
    lease: int | None = None  # running: lease expiry
    error: str | None = None  # kind of the last recorded error: boom fatal lease

    @property
    def terminal(self) -> bool:
        return self.state in ("completed", "failed", "cancelled")


def new_task(spec: Spec, now: int) -> TState:
    n = spec.n
    return TState(
        "pending", 1, (), (None,) * n, (None,) * n, (None,) * n, available=now + spec.delay
    )


def claimable(t: TState, now: int) -> bool:
    return t.state in ("pending", "sleeping") and t.available is not None and t.available <= now


def expired(t: TState, now: int) -> bool:
    return t.state == "running" and t.lease is not None and t.lease <= now


def fail(spec: Spec, t: TState, now: int, kind: str, fatal: bool) -> TState:
    """fail_run: retry after the strategy's delay while attempts remain, else fail."""
    if not fatal and t.attempts < spec.max_attempts:
        return attrs.evolve(
            t,
            state="pending",
            attempts=t.attempts + 1,
            available=now + spec.retry_delay,
            lease=None,
            error=kind,
        )
    return attrs.evolve(t, state="failed", available=None, lease=None, error=kind)


def released(t: TState, now: int) -> TState:
    """release_run (graceful shutdown): pending again at once, same attempt."""
    return attrs.evolve(t, state="pending", available=now, lease=None)


def cancelled(t: TState) -> TState:
    return attrs.evolve(t, state="cancelled", available=None, lease=None, wait=None)


def expected_result(spec: Spec, t: TState) -> list[dict[str, Any]]:
    out = []
    for i, attempt in enumerate(t.commits):
        ev = t.events[i]
        if spec.steps[i].event is None:
            seen: Any = None
        else:
            assert ev is not None
            seen = "timeout" if ev[0] == "t" else ev[1]
        out.append({"i": i, "a": attempt, "ev": seen, "p": t.pres[i]})
    return out


Label = tuple[Any, ...]


def run_attempt(
    spec: Spec,
    t: TState,
    now: int,
    events: dict[str, int],
    *,
    resume: tuple[int, str] | None = None,
) -> tuple[list[tuple[Label, TState]], TState]:
    """One attempt of a claimable task (or, with `resume`, the rest of an attempt that
    stopped at the gate (step, phase)). Returns the running states the database passes
    through (each labelled: claim / write / gate) and the state it ends in."""
    points: list[tuple[Label, TState]] = []
    a = t.attempts
    if resume is None:
        r = attrs.evolve(t, state="running", available=None, lease=now + LEASE)
        points.append((("claim",), r))
        first, phase = 0, None
    else:
        r = t
        first, phase = resume
    evs, wakes, pres, commits = list(r.events), list(r.wakes), list(r.pres), r.commits
    for i in range(first, spec.n):
        step = spec.steps[i]
        resuming = resume is not None and i == first
        if resuming and phase == "inside":
            commits = (*commits, a)
            r = attrs.evolve(r, commits=commits)
            points.append((("write",), r))
            fatal = spec.failure(a, i, "after")
            if fatal is not None:
                return points, fail(spec, r, now, "fatal" if fatal else "boom", fatal)
            continue
        if not resuming:
            if step.event is not None and evs[i] is None:
                if r.wait is not None and r.wait[0] == i:
                    deadline = r.wait[1]
                else:
                    deadline = None if step.timeout is None else now + step.timeout
                if step.event in events:
                    evs[i] = ("p", events[step.event])
                elif deadline is not None and deadline <= now:
                    evs[i] = ("t",)
                else:
                    end = attrs.evolve(
                        r,
                        state="sleeping",
                        events=tuple(evs),
                        wait=(i, deadline, a),
                        available=deadline,
                        lease=None,
                    )
                    return points, end
                r = attrs.evolve(r, events=tuple(evs), wait=None)
                points.append((("write",), r))
            if step.sleep is not None:
                if wakes[i] is None:
                    wakes[i] = now + step.sleep
                    r = attrs.evolve(r, wakes=tuple(wakes))
                    points.append((("write",), r))
                wake = wakes[i]
                assert wake is not None
                if now < wake:
                    end = attrs.evolve(r, state="sleeping", available=wake, lease=None)
                    return points, end
            if pres[i] is None:
                # ctx.step queues its checkpoint: it is durable by the task's next durable
                # action at the latest, so code between the two may see it either way.
                points.append((("gate", i, "before"), r))
                pres[i] = a
                r = attrs.evolve(r, pres=tuple(pres))
                points.append((("write",), r))
            points.append((("gate", i, "before"), r))
        fatal = spec.failure(a, i, "before")
        if fatal is not None:
            return points, fail(spec, r, now, "fatal" if fatal else "boom", fatal)
        if i >= len(commits):
            points.append((("gate", i, "inside"), r))
            commits = (*commits, a)
            r = attrs.evolve(r, commits=commits)
            points.append((("write",), r))
        fatal = spec.failure(a, i, "after")
        if fatal is not None:
            return points, fail(spec, r, now, "fatal" if fatal else "boom", fatal)
    return points, attrs.evolve(r, state="completed", available=None, lease=None)


def trace(
    spec: Spec, t: TState, now: int, events: dict[str, int], *, locked: bool = False
) -> list[tuple[Label, TState]]:
    """Everything workers may do to the task at time `now`, in order: reaping an expired
    lease, then attempts while it stays claimable. A `locked` run (a stalled worker holds
    its row lock, inside a step's transaction) is skipped by the reaper."""
    out: list[tuple[Label, TState]] = [(("start",), t)]
    for _ in range(1000):
        if expired(t, now) and not locked:
            t = fail(spec, t, now, "lease", False)
            out.append((("end",), t))
        elif claimable(t, now):
            points, t = run_attempt(spec, t, now, events)
            out.extend(points)
            out.append((("end",), t))
        else:
            return out
    raise AssertionError("model did not settle")


def settle(
    spec: Spec, t: TState, now: int, events: dict[str, int], *, locked: bool = False
) -> TState:
    """run_until_idle: the task's state once nothing is claimable."""
    return trace(spec, t, now, events, locked=locked)[-1][1]


def reachable(
    spec: Spec, t: TState, now: int, events: dict[str, int], mode: str, *, locked: bool = False
) -> list[TState]:
    """States a task may be left in by a worker stopped at any moment.

    mode "release": graceful shutdown hands in-flight runs back (pending, same attempt);
    "crash": in-flight runs stay running with their lease; "end": in-flight attempts
    were allowed to finish."""
    out = []
    for label, s in trace(spec, t, now, events, locked=locked):
        if label[0] in ("start", "end"):
            out.append(s)
        elif mode == "release":
            out.append(released(s, now))
        elif mode == "crash":
            out.append(s)
    return out


def gate_states(
    spec: Spec, t: TState, now: int, events: dict[str, int], info: tuple[UUID, int, int, str]
) -> list[TState]:
    """The running states the task blocked at `info`'s gate may show."""
    _, attempt, step, phase = info
    return [
        s
        for label, s in trace(spec, t, now, events)
        if label == ("gate", step, phase) and s.attempts == attempt
    ]


# -- observing the database -------------------------------------------------------------


@attrs.frozen
class Snapshot:
    tasks: dict[UUID, dict[str, Any]]
    runs: dict[UUID, list[dict[str, Any]]]
    checkpoints: dict[UUID, dict[str, dict[str, Any]]]
    waits: dict[UUID, dict[str, Any]]
    ledger: dict[UUID, list[dict[str, Any]]]
    events: frozenset[tuple[str, str]]
    now: datetime


_REL = "CASE WHEN isfinite({c}) THEN extract(epoch FROM {c} - {{s}}.clock_now()) END::float8"
SNAPSHOT = (
    "SELECT {s}.clock_now() AS now,"
    " (SELECT coalesce(json_agg(t), '[]') FROM (SELECT task_id, state, attempts,"
    "   max_attempts, result, error, last_run_id, task_name, queue, parent_task_id,"
    "   params ->> 'path' AS path, params ->> 'fail' AS fail, cancel_reason"
    "   FROM {s}.tasks) t) AS tasks,"
    " (SELECT coalesce(json_agg(r ORDER BY r.attempt), '[]') FROM (SELECT run_id, task_id,"
    "   attempt, state, worker_id, lease_expires_at IS NOT NULL AS leased, wake_reason,"
    f"   {_REL.format(c='available_at')} AS available_rel,"
    f"   {_REL.format(c='lease_expires_at')} AS lease_rel FROM {{s}}.runs) r) AS runs,"
    " (SELECT coalesce(json_agg(c), '[]') FROM (SELECT task_id, name, value, run_id"
    "   FROM {s}.checkpoints) c) AS checkpoints,"
    " (SELECT coalesce(json_agg(w), '[]') FROM (SELECT task_id, run_id, queue, event_name,"
    f"   step_name, {_REL.format(c='timeout_at')} AS timeout_rel FROM {{s}}.waits) w) AS waits,"
    " (SELECT coalesce(json_agg(e), '[]') FROM (SELECT queue, event_name"
    "   FROM {s}.events) e) AS events,"
    " (SELECT coalesce(json_agg(l ORDER BY l.id), '[]') FROM (SELECT id, task_id, step,"
    "   attempt, run_id FROM {s}.ledger) l) AS ledger"
)
_IDS = ("task_id", "run_id", "last_run_id", "parent_task_id")


def take_snapshot(conn: psycopg.Connection[Any], query: sql.Composable) -> Snapshot:
    """Everything the checks need, in one statement (one consistent snapshot)."""
    row = conn.execute(query).fetchone()
    assert row is not None

    def rows(key: str) -> list[dict[str, Any]]:
        out = row[key]
        for r in out:
            for k in _IDS:
                if r.get(k) is not None:
                    r[k] = UUID(r[k])
        return out

    by_task: dict[UUID, list[dict[str, Any]]] = {}
    for r in rows("runs"):
        by_task.setdefault(r["task_id"], []).append(r)
    cps: dict[UUID, dict[str, dict[str, Any]]] = {}
    for r in rows("checkpoints"):
        cps.setdefault(r["task_id"], {})[r["name"]] = r
    led: dict[UUID, list[dict[str, Any]]] = {}
    for r in rows("ledger"):
        led.setdefault(r["task_id"], []).append(r)
    return Snapshot(
        tasks={r["task_id"]: r for r in rows("tasks")},
        runs=by_task,
        checkpoints=cps,
        waits={r["task_id"]: r for r in rows("waits")},
        ledger=led,
        events=frozenset((e["queue"], e["event_name"]) for e in row["events"]),
        now=row["now"],
    )


def virtual(now: int, rel: float | None) -> int | None:
    """A database instant `rel` seconds from now, as a virtual time (None: infinity)."""
    if rel is None:
        return None
    return now + math.floor(rel / QUANTUM + 0.5) * QUANTUM


def error_kind(error: dict[str, Any] | None) -> str | None:
    if error is None:
        return None
    kind = str(error.get("type"))
    if kind == "LeaseExpired":
        return "lease"
    if kind.endswith(".BoomError"):
        return "boom"
    if kind.endswith(".NonRetryable"):
        return "fatal"
    return f"unexpected error {error!r}"


def observe(spec: Spec, snap: Snapshot, task_id: UUID, now: int) -> TState:
    """The model's view of what the database holds for one task."""
    trow = snap.tasks[task_id]
    runs = snap.runs.get(task_id, [])
    attempt_of = {r["run_id"]: r["attempt"] for r in runs}
    last = next((r for r in runs if r["run_id"] == trow["last_run_id"]), None)
    cps = snap.checkpoints.get(task_id, {})
    commits = tuple(row["attempt"] for row in sorted(snap.ledger.get(task_id, []), key=_step))
    events: list[EventOutcome] = []
    for name in spec.event_checkpoints():
        value = cps[name]["value"] if name is not None and name in cps else None
        if value is None:
            events.append(None)
        elif value == {"timeout": True}:
            events.append(("t",))
        elif set(value) == {"payload"}:
            events.append(("p", value["payload"]))
        else:
            events.append((GONE, value))
    wakes: list[int | None] = []
    for i in range(spec.n):
        row = cps.get(f"$sleep:z{i}")
        if row is None:
            wakes.append(None)
        else:
            wake_at = datetime.fromisoformat(row["value"]["wake_at"])
            wakes.append(virtual(now, (wake_at - snap.now).total_seconds()))
    pres = tuple(cps[f"p{i}"]["value"] if f"p{i}" in cps else None for i in range(spec.n))
    wait = None
    wrow = snap.waits.get(task_id)
    if wrow is not None:
        names = spec.event_checkpoints()
        step = names.index(wrow["step_name"]) if wrow["step_name"] in names else -1
        wait = (step, virtual(now, wrow["timeout_rel"]), attempt_of.get(wrow["run_id"], -1))
    state = trow["state"]
    available = lease = None
    if last is not None and state in ("pending", "sleeping"):
        available = virtual(now, last["available_rel"])
    if last is not None and state == "running":
        lease = virtual(now, last["lease_rel"])
    return TState(
        state=state,
        attempts=trow["attempts"],
        commits=commits,
        events=tuple(events),
        wakes=tuple(wakes),
        pres=pres,
        wait=wait,
        available=available,
        lease=lease,
        error=error_kind(trow["error"]),
    )


def _step(row: dict[str, Any]) -> int:
    return int(row["step"])


LIVE = ("pending", "running", "sleeping")


def check_database(specs_by_id: dict[UUID, Spec], snap: Snapshot) -> None:
    """Invariants of the generic tasks that hold whatever the model predicts."""
    generic = {i: t for i, t in snap.tasks.items() if t["task_name"] == TASK_NAME}
    assert set(generic) == set(specs_by_id), "tasks appeared or vanished"
    for task_id, trow in generic.items():
        spec = specs_by_id[task_id]
        where = f"task {task_id} ({spec})"
        # attempts <= max_attempts
        assert 1 <= trow["attempts"] <= trow["max_attempts"] == spec.max_attempts, where
        # A committed step never runs again: one ledger row per (task, step), a prefix of
        # the steps, each matching the checkpoint written in the same transaction.
        rows = snap.ledger.get(task_id, [])
        steps = [r["step"] for r in rows]
        assert sorted(steps) == list(range(len(steps))), f"ledger {rows} of {where}"
        cps = snap.checkpoints.get(task_id, {})
        for r in rows:
            cp = cps.get(f"s{r['step']}")
            assert cp is not None, f"ledger row {r} without its checkpoint, {where}"
            assert cp["run_id"] == r["run_id"], f"ledger {r} vs checkpoint {cp}, {where}"
            assert cp["value"]["i"] == r["step"], where
            assert cp["value"]["a"] == r["attempt"], where
        known = {f"s{i}" for i in range(spec.n)} | {f"p{i}" for i in range(spec.n)}
        known |= {f"$sleep:z{i}" for i in range(spec.n)} | set(spec.event_checkpoints())
        assert set(cps) <= known, f"unexpected checkpoints {sorted(set(cps) - known)}, {where}"
        step_cps = [name for name in cps if name.startswith("s")]
        assert len(step_cps) == len(rows), f"checkpoints {sorted(cps)} vs ledger {rows}"
        # Runs: one per attempt, 1..attempts; only the last may be live; at most one
        # running, with an owner and a lease; the ledger's writers are the task's runs.
        runs = snap.runs.get(task_id, [])
        assert [r["attempt"] for r in runs] == list(range(1, trow["attempts"] + 1)), where
        by_id = {r["run_id"]: r for r in runs}
        for r in rows:
            assert by_id[r["run_id"]]["attempt"] == r["attempt"], f"ledger {r}, {where}"
        live = [r for r in runs if r["state"] in LIVE]
        running = [r for r in runs if r["state"] == "running"]
        assert len(running) <= 1, f"two running runs of one task: {running}"
        assert len(live) <= 1, f"two live runs of one task: {live}"
        for r in running:
            assert r["worker_id"], r
            assert r["leased"], r
        for r in runs[:-1]:
            assert r["state"] == "failed", f"earlier attempt not failed: {runs}"
        last = runs[-1]
        assert last["run_id"] == trow["last_run_id"], where
        assert last["state"] == trow["state"], f"run {last} vs task {trow['state']}"


def check_every_task(snap: Snapshot) -> None:
    """Invariants of every task, whatever its kind."""
    for trow in snap.tasks.values():
        assert 1 <= trow["attempts"] <= trow["max_attempts"], f"attempts out of bounds: {trow}"
        if trow["state"] not in LIVE:
            continue
        # Cascading cancellation: no live descendant under a failed or cancelled ancestor.
        parent = trow["parent_task_id"]
        while parent is not None:
            above = snap.tasks[parent]
            assert above["state"] not in ("failed", "cancelled"), (
                f"live task {trow}\n  under the {above['state']} ancestor {above}"
            )
            parent = above["parent_task_id"]
    # No lost wake-up: once an emit has committed, nobody still waits for that event (the
    # emit deletes every waits row of its event; an await checks for the event first).
    for w in snap.waits.values():
        assert (w["queue"], w["event_name"]) not in snap.events, (
            f"task {w['task_id']} is left waiting for {w['event_name']!r} on {w['queue']!r},"
            " which was emitted"
        )


# -- the trio side ----------------------------------------------------------------------


class Portal:
    """A trio loop in a helper thread, so synchronous rules can drive trio code while
    connections and worker nurseries stay alive between rules."""

    def __init__(self) -> None:
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stop: trio.Event | None = None
        self.nursery: trio.Nursery | None = None
        self.leftover: list[str] = []

    def __enter__(self) -> Portal:
        ready = threading.Event()

        def main() -> None:
            try:
                trio.run(self._main, ready)
            except BaseException as ex:  # noqa: BLE001 - re-raised by the caller
                self._error = ex
                ready.set()

        self._thread = threading.Thread(target=main, name="stateful-trio-portal")
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the trio portal did not start")
        if self._error is not None:
            raise self._error
        return self

    async def _main(self, ready: threading.Event) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            ready.set()
            await self._stop.wait()
            self.leftover = [t.name for t in nursery.child_tasks]
            nursery.cancel_scope.cancel()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        async def guarded() -> T:
            with trio.fail_after(RULE_TIMEOUT):
                return await fn(*args)

        return trio.from_thread.run(guarded, trio_token=self._token)

    def children(self) -> int:
        async def count() -> int:
            assert self.nursery is not None
            return len(self.nursery.child_tasks)

        return self.run(count)

    def __exit__(self, *exc: object) -> None:
        assert self._thread is not None
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the trio portal thread did not stop"
        if self._error is not None:
            raise self._error
        assert not self.leftover, f"tasks left in the portal's nursery: {self.leftover}"


@attrs.define
class Resident:
    """An async context manager held open in the portal's nursery across rules."""

    value: Any
    _stop: trio.Event
    _done: trio.Event

    @classmethod
    async def open(cls, nursery: trio.Nursery, cm: Any) -> Resident:
        stop, done = trio.Event(), trio.Event()

        async def hold(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                async with cm as value:
                    task_status.started(value)
                    await stop.wait()
            finally:
                done.set()

        value = await nursery.start(hold)
        return cls(value, stop, done)

    async def close(self) -> None:
        self._stop.set()
        await self._done.wait()


@attrs.define
class Zombie:
    """A worker stalled mid-step by a gate, alive across rules (heartbeat loop and
    listener running), asked to shut down so it claims nothing more."""

    worker: dt.Worker
    gate: Gate
    scope: trio.CancelScope
    done: trio.Event
    errors: list[BaseException]
    beats_started: int = 0
    beats_done: int = 0  # the highest-numbered heartbeat that has finished

    def count_beats(self) -> None:
        """Count the worker's heartbeats (private hook), so a rule can wait for the one a
        cancel notification triggers instead of racing it."""
        beat = self.worker._beat

        async def counted() -> None:
            self.beats_started += 1
            number = self.beats_started
            try:
                await beat()
            finally:
                self.beats_done = max(self.beats_done, number)

        self.worker._beat = counted  # type: ignore[method-assign]


def task_tree() -> str:
    """Every trio task of the portal and where it waits (for hang reports)."""
    lines: list[str] = []

    def walk(task: trio.lowlevel.Task, depth: int) -> None:
        frames = [f"{f.f_code.co_name}:{n}" for f, n in task.iter_await_frames()]
        lines.append("  " * depth + f"{task.name}: " + " > ".join(frames[-8:]))
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)

    walk(trio.lowlevel.current_root_task(), 0)
    return "\n".join(lines)


class FailureLog(logging.Handler):
    """Collects the worker's report of each failed attempt ("retrying in ..." at WARNING,
    "no attempts left or not retryable" at ERROR), so the machine can check that the
    decision it reports is the one the retry policy allows."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("%s failed; "):
            self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        out, self.records = self.records, []
        return out


_ATTEMPT = re.compile(r"^task '([^']*)' ([0-9a-f-]{36}) attempt (\d+)/(\d+)$")


def check_failure_reports(records: list[logging.LogRecord]) -> None:
    """Bounded attempts, seen from the decision itself: an attempt is retried exactly when
    it failed with a retryable error and attempts remain (the SQL guard would hide a
    decision that retried the last attempt; the worker's report does not)."""
    for record in records:
        what, shown = record.args[0], record.args[-1]  # type: ignore[index]
        match = _ATTEMPT.match(str(what))
        assert match is not None, f"unexpected failure report {record.getMessage()}"
        attempt, max_attempts = int(match[3]), int(match[4])
        retry = "retrying" in record.msg
        # The exception itself when its traceback could be formatted, else its summary.
        ex = record.exc_info[1] if record.exc_info else shown
        retryable = not (isinstance(ex, dt.NonRetryable) or str(shown).startswith("NonRetryable:"))
        assert retry == (retryable and attempt < max_attempts), (
            f"attempt {attempt}/{max_attempts} failed with {ex!r}: the worker decided "
            f"{'to retry' if retry else 'to fail the task'}: {record.getMessage()}"
        )


async def _blocked_by(monitor: Any, pid: int) -> int:
    """The backend waiting for a lock `pid` holds (the held waiter's await_event)."""
    with trio.move_on_after(10):
        while True:
            cur = await monitor.execute(
                "SELECT pid FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))", (pid,)
            )
            rows = await cur.fetchall()
            await monitor.rollback()  # pg_stat_activity is read once per transaction
            if rows:
                assert len(rows) == 1, f"several backends wait for the held row: {rows}"
                return int(rows[0]["pid"])
            await trio.sleep(0.002)
    raise AssertionError("the held waiter's await_event never blocked on the held row")


async def _parked(monitor: Any, waiter_pid: int, count: int, done: list[int]) -> None:
    """Until each of `count` emits has returned or waits behind the held await_event."""
    with trio.move_on_after(10):
        while True:
            cur = await monitor.execute(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))"
                " AND query LIKE '%%deliver_event(%%'",
                (waiter_pid,),
            )
            row = await cur.fetchone()
            await monitor.rollback()
            if len(done) + row["n"] >= count:
                return
            await trio.sleep(0.002)
    raise AssertionError(f"emits neither returned nor waited: {len(done)} of {count} returned")


def descendants(snap: Snapshot, task_id: UUID) -> set[UUID]:
    children: dict[UUID, list[UUID]] = {}
    for t in snap.tasks.values():
        if t["parent_task_id"] is not None:
            children.setdefault(t["parent_task_id"], []).append(t["task_id"])
    out: set[UUID] = set()
    todo = list(children.get(task_id, []))
    while todo:
        child = todo.pop()
        out.add(child)
        todo.extend(children.get(child, []))
    return out


# -- the machine ------------------------------------------------------------------------


def _guard(fn: Callable[..., T]) -> Callable[..., T]:
    """Remember that a rule failed, so teardown only cleans up."""

    def wrapper(self: StatefulMachine, *args: Any, **kwargs: Any) -> T:
        try:
            return fn(self, *args, **kwargs)
        except BaseException:
            self.broken = True
            first_failure()
            raise

    wrapper.__name__ = fn.__name__
    wrapper.__qualname__ = fn.__qualname__
    wrapper.__doc__ = fn.__doc__
    return wrapper


class StatefulMachine(RuleBasedStateMachine):
    def __init__(self, url: str, portal: Portal, failures: FailureLog) -> None:
        super().__init__()
        STATS["examples (machines run)"] += 1
        self.url = url
        self.portal = portal
        self.failures = failures
        failures.take()  # a report of the previous example is not this one's
        self.schema = f"st_{uuid.uuid4().hex[:16]}"
        self.now = 0  # virtual seconds advanced so far
        self.events: dict[str, int] = {}
        self.specs: dict[UUID, Spec] = {}
        self.ids: list[UUID] = []
        self.model: dict[UUID, TState] = {}
        self.gate: Gate | None = None
        self.zombie: Zombie | None = None
        self.broken = False
        self.workers = 0
        self.respawns = 0
        self.snap: Snapshot | None = None
        self.snapshot_query = sql.SQL(SNAPSHOT).format(s=sql.Identifier(self.schema))
        self.definition = _make_task(self)
        self.side_tasks = _make_side_tasks(self)
        # Task trees: each spawned tree (with paths), and the paths cancelled directly.
        self.trees: list[dict[str, Any]] = []
        self.node_specs: dict[str, dict[str, Any]] = {}
        self.cancelled_paths: set[str] = set()
        self.side_events: dict[str, int] = {}
        # Event races: how many, each one's waiters and the payloads its emits carried.
        self.races: list[tuple[list[UUID], set[int]]] = []
        self.hold: Hold | None = None
        self.keys: dict[str, UUID] = {}  # idempotency key -> the task it named
        self.resident: Resident | None = None
        self.side_resident: Resident | None = None
        self.db: psycopg.Connection[Any] | None = None
        try:
            self.resident = portal.run(self._open_client)
            self.side_resident = portal.run(self._open_side_client)
            self.db = psycopg.connect(url, row_factory=dict_row, autocommit=True)
            self.db.execute(
                sql.SQL(
                    "CREATE TABLE {s}.ledger (id bigserial PRIMARY KEY, task_id uuid NOT NULL,"
                    " step integer NOT NULL, attempt integer NOT NULL, run_id uuid NOT NULL);"
                    # Every worker that ever held each run, so a rule can make a former
                    # owner beat for a run that another worker holds now.
                    " CREATE TABLE {s}.owners (run_id uuid, worker_id text,"
                    "  PRIMARY KEY (run_id, worker_id));"
                    " CREATE FUNCTION {s}.note_owner() RETURNS trigger LANGUAGE plpgsql AS $$"
                    " BEGIN INSERT INTO {s}.owners VALUES (NEW.run_id, NEW.worker_id)"
                    "  ON CONFLICT DO NOTHING; RETURN NULL; END $$;"
                    " CREATE TRIGGER note_owner AFTER UPDATE OF worker_id ON {s}.runs"
                    "  FOR EACH ROW WHEN (NEW.worker_id IS NOT NULL)"
                    "  EXECUTE FUNCTION {s}.note_owner();"
                ).format(s=sql.Identifier(self.schema))
            )
        except BaseException:
            self._cleanup()
            raise

    # -- plumbing -------------------------------------------------------------------

    @property
    def client(self) -> dt.Durable:
        assert self.resident is not None
        client: dt.Durable = self.resident.value
        return client

    @property
    def side(self) -> dt.Durable:
        assert self.side_resident is not None
        client: dt.Durable = self.side_resident.value
        return client

    async def _open_side_client(self) -> Resident:
        assert self.portal.nursery is not None
        resident = await Resident.open(
            self.portal.nursery,
            dt.Durable.connect(self.url, schema=self.schema, queue=SIDE, pool_size=6),
        )
        resident.value.register(*self.side_tasks)
        return resident

    async def _open_client(self) -> Resident:
        assert self.portal.nursery is not None
        resident = await Resident.open(
            self.portal.nursery, dt.Durable.connect(self.url, schema=self.schema, pool_size=4)
        )
        resident.value.register(self.definition)
        return resident

    def options(self, *, concurrency: int = 2, grace: float = 0.0) -> dt.WorkerOptions:
        self.workers += 1
        return dt.WorkerOptions(
            concurrency=concurrency,
            claim_timeout=LEASE,
            poll_interval=0.05,
            shutdown_grace=grace,
            worker_id=f"w{self.workers}",
        )

    async def gate_point(self, ctx: dt.TaskContext, step: int, phase: str) -> None:
        gate = self.gate
        if gate is None or gate.phase != phase or gate.info is not None:
            return
        gate.info = (ctx.task_id, ctx.attempt, step, phase)
        gate.hit.set()
        try:
            await gate.release.wait()
        except trio.Cancelled:
            gate.cancelled = True
            # Diagnostics only (private): why the worker cancelled the stalled step.
            gate.why = f"lost={ctx._run.lost!r} state={ctx._run.state.value}"
            raise
        finally:
            gate.exited.set()

    async def _idle(self, worker: dt.Worker) -> bool:
        """Nothing claimable, nothing in flight, no claim or reap under way (like
        run_until_idle)."""
        if worker.busy:
            return False
        count = await self.client.store.claimable_count([self.client.queue], [TASK_NAME])
        return count == 0 and not worker.busy

    def snapshot(self) -> Snapshot:
        assert self.db is not None
        self.snap = take_snapshot(self.db, self.snapshot_query)
        return self.snap

    def describe(self, task_id: UUID) -> str:
        return (
            f"task #{self.ids.index(task_id)} {task_id}\n  spec={self.specs[task_id]}\n"
            f"  now={self.now} events={self.events}"
        )

    def expect_exact(self) -> None:
        """Every task's database state is what the model says."""
        snap = self.snapshot()
        for task_id, spec in self.specs.items():
            seen = observe(spec, snap, task_id, self.now)
            want = self.model[task_id]
            assert seen == want, (
                f"{self.describe(task_id)}\n  model={want}\n  database={seen}"
                f"\n  ledger={snap.ledger.get(task_id)}"
            )
            self.check_result(task_id, seen, snap)

    def adopt(self, before: dict[UUID, TState], mode: str, gate: Gate | None) -> None:
        """Every task's database state is one the model can reach from `before` (the
        gated task exactly at its gate); the model takes what it sees."""
        snap = self.snapshot()
        for task_id, spec in self.specs.items():
            seen = observe(spec, snap, task_id, self.now)
            if gate is not None and gate.info is not None and gate.info[0] == task_id:
                want = gate_states(spec, before[task_id], self.now, self.events, gate.info)
                assert seen in want, (
                    f"{self.describe(task_id)}\n  stopped at {gate.info}\n  model={want}"
                    f"\n  database={seen}\n  from={before[task_id]}"
                )
            else:
                locked = self.locked(task_id)
                options = reachable(
                    spec, before[task_id], self.now, self.events, mode, locked=locked
                )
                assert seen in options, (
                    f"{self.describe(task_id)}\n  database={seen}\n  from={before[task_id]}\n"
                    "  reachable (" + mode + "):\n    " + "\n    ".join(map(str, options))
                )
            self.model[task_id] = seen
            self.check_result(task_id, seen, snap)

    def check_result(self, task_id: UUID, seen: TState, snap: Snapshot) -> None:
        result = snap.tasks[task_id]["result"]
        if seen.state == "completed":
            assert len(seen.commits) == self.specs[task_id].n, self.describe(task_id)
            want = expected_result(self.specs[task_id], seen)
            assert result == want, f"{self.describe(task_id)}\n  result={result} want={want}"
        else:
            assert result is None, f"{self.describe(task_id)} has a result {result}"

    def pick(self, index: int) -> UUID:
        return self.ids[index % len(self.ids)]

    # -- rules ----------------------------------------------------------------------

    def workable(self) -> bool:
        """Whether a worker has anything to do now (claim, or reap an expired lease)."""
        return any(
            claimable(t, self.now) or (expired(t, self.now) and not self.locked(i))
            for i, t in self.model.items()
        )

    def locked(self, task_id: UUID) -> bool:
        """Whether the stalled worker holds this task's run row lock (stalled inside a
        step's transaction): the reaper skips it, and cancelling it would wait."""
        zombie = self.zombie
        return (
            zombie is not None
            and zombie.gate.phase == "inside"
            and zombie.gate.info is not None
            and zombie.gate.info[0] == task_id
            and not zombie.gate.cancelled
        )

    @initialize(batch=st.lists(specs(), min_size=2, max_size=5))
    @_guard
    def spawn_first(self, batch: list[Spec]) -> None:
        for spec in batch:
            self.do_spawn(spec)

    # Counts only the spawns Hypothesis chose: nudges respawn when every task has ended,
    # which depends on scheduling, and a precondition that changed with it would make the
    # same choices draw differently on replay (FlakyStrategyDefinition).
    @precondition(lambda self: len(self.ids) - self.respawns < MAX_TASKS)
    @rule(spec=specs())
    @_guard
    def spawn(self, spec: Spec) -> None:
        self.do_spawn(spec)

    def do_spawn(self, spec: Spec) -> None:
        async def go() -> dt.SpawnResult:
            return await self.client.spawn(self.definition, spec.to_json(), options=spec.options())

        spawned = self.portal.run(go)
        self.ids.append(spawned.task_id)
        self.specs[spawned.task_id] = spec
        self.model[spawned.task_id] = new_task(spec, self.now)
        self.expect_exact()

    @rule(name=st.sampled_from(EVENTS), payload=st.integers(0, 9))
    @_guard
    def emit(self, name: str, payload: int) -> None:
        self.do_emit(name, payload)

    @rule(seconds=st.sampled_from((500, 1000, 2000, 5000)))
    @_guard
    def advance(self, seconds: int) -> None:
        self.do_advance(seconds)

    def do_emit(self, name: str, payload: int) -> None:
        woken = self.portal.run(self.client.emit_event, name, payload)
        self.events[name] = payload
        expected = 0
        for task_id, t in self.model.items():
            spec = self.specs[task_id]
            if t.wait is None or spec.steps[t.wait[0]].event != name:
                continue
            step, _, attempt = t.wait
            evs = list(t.events)
            if evs[step] is None:
                evs[step] = ("p", payload)
            new = attrs.evolve(t, events=tuple(evs), wait=None)
            if t.state == "sleeping" and attempt == t.attempts:
                expected += 1
                new = attrs.evolve(new, state="pending", available=self.now)
            self.model[task_id] = new
        assert woken == expected, f"emit {name} woke {woken} runs, model says {expected}"
        self.expect_exact()

    @precondition(lambda self: self.ids)
    @rule(index=st.integers(0, MAX_TASKS - 1))
    @_guard
    def cancel(self, index: int) -> None:
        task_id = self.pick(index)
        if self.locked(task_id):
            # cancel_task would wait for the stalled transaction's row lock: forever here.
            event("cancel: skipped, a stalled transaction holds the run's row lock")
            return
        before = self.model[task_id]
        zombie = self.zombie
        beats = zombie.beats_started if zombie is not None else 0
        done = self.portal.run(self.client.cancel, task_id, "stateful cancel")
        assert done == (not before.terminal), f"cancel returned {done} for {before}"
        if done:
            self.model[task_id] = cancelled(before)
        if done and zombie is not None and zombie.gate.info is not None:
            self.after_notify(zombie, beats, stalled_cancelled=zombie.gate.info[0] == task_id)
        self.expect_exact()

    def after_notify(self, zombie: Zombie, beats: int, *, stalled_cancelled: bool = False) -> None:
        """A cancel notification makes the stalled worker heartbeat at once. If it no
        longer owns a live lease on its run (its task was cancelled, or the lease expired,
        or the run was reaped) it must stop that attempt through its cancel scope and
        write nothing more (invariants 2 and 7); a stalled transaction rolls back and lets
        go of the row lock. `beats`: how many heartbeats it had started before."""
        assert zombie.gate.info is not None
        stalled, attempt, _, _ = zombie.gate.info
        t = self.model[stalled]
        alive = t.state == "running" and t.attempts == attempt and (t.lease or 0) > self.now
        if not alive:
            self.portal.run(self._await_zombie_gone, zombie)
            assert zombie.gate.cancelled, "the stalled step was not cancelled"
            event(
                "notify: stalled attempt cancelled"
                if stalled_cancelled
                else "notify: stalled worker found its lease lost"
            )
            self.zombie = None
        else:
            # It renews (or, stalled inside its transaction, reports the run held).
            self.portal.run(self._await_beat, zombie, beats)
            event(f"notify: stalled worker ({zombie.gate.phase}) kept its live run")

    def settle_zombie(self) -> None:
        """After a rule that may have sent cancel notifications (side workers failing or
        cancelling trees): send one more and wait for its heartbeat, so that whether the
        stalled worker still holds its run does not depend on timing."""
        zombie = self.zombie
        if zombie is None or zombie.gate.info is None:
            return
        beats = zombie.beats_started
        assert self.db is not None
        self.db.execute("SELECT pg_notify('durable_trio_cancel', %s)", (self.schema,))
        self.after_notify(zombie, beats)

    async def _await_beat(self, zombie: Zombie, beats: int) -> None:
        with trio.move_on_after(10):
            while zombie.beats_done <= beats and not zombie.done.is_set():
                await trio.sleep(0.002)
        if zombie.beats_done <= beats:
            raise AssertionError(
                "a cancel notification did not make the stalled worker heartbeat; its tasks:\n"
                + task_tree()
            )
        if zombie.errors:
            raise zombie.errors[0]

    async def _await_zombie_gone(self, zombie: Zombie) -> None:
        with trio.move_on_after(10):
            await zombie.gate.exited.wait()
            await zombie.done.wait()
        if not zombie.done.is_set():
            raise AssertionError(
                "the stalled worker did not stop its lost run; its tasks:\n" + task_tree()
            )
        if zombie.errors:
            raise zombie.errors[0]

    def do_advance(self, seconds: int) -> None:
        self.portal.run(advance_clock, self.client, seconds)
        self.now += seconds
        self.expect_exact()

    # Preconditions only look at what is deterministic (how many tasks were spawned):
    # the model adopts scheduling-dependent observations, and Hypothesis needs the same
    # choices to lead to the same draws. Work with nothing to do returns at once.

    @precondition(lambda self: self.ids)
    @rule(concurrency=st.sampled_from((1, 2, 4)))
    @_guard
    def run_idle(self, concurrency: int) -> None:
        """run_until_idle: everything due runs to a standstill (predicted exactly)."""
        if self.ready("idle"):
            self.do_run_idle(concurrency)

    @precondition(lambda self: self.ids)
    @rule(k=st.integers(1, 3), grace=st.sampled_from((0.0, 60.0)))
    @_guard
    def run_some(self, k: int, grace: float) -> None:
        """A worker claims k runs (or finds nothing to do), then shuts down gracefully:
        with no grace its in-flight runs are handed back, else they finish."""
        if self.ready("some"):
            self.do_run_some(k, grace)

    @precondition(lambda self: self.ids)
    @rule(phase=st.sampled_from(("before", "inside")))
    @_guard
    def crash(self, phase: str) -> None:
        """A worker is killed (its nursery cancelled: no release, nothing more written)
        the moment one step reaches the gate, before or inside its transaction."""
        if self.ready("crash"):
            self.do_crash(phase)

    @precondition(lambda self: self.ids)
    @rule(phase=st.sampled_from(("before", "inside")))
    @_guard
    def stall_or_unstall(self, phase: str) -> None:
        """Stall a worker at a gate, before or inside a step's transaction: a zombie that
        keeps its connections (and, inside, the run's row lock) across the next rules.
        If there is one already, release it instead."""
        if self.zombie is not None:
            event("work: unstall")
            self.do_unstall()
        elif self.ready("stall"):
            self.do_stall(phase)

    def ready(self, mode: str) -> bool:
        """Whether a worker has something to do, after a nudge if it had not."""
        event(f"work: {mode}")
        if not self.workable():
            self.nudge()
        if not self.workable():
            event("work: nothing to do")
            return False
        return True

    def nudge(self) -> None:
        """Nothing is due: advance the clock to the next due run or lease expiry, or emit
        an awaited event, or (everything ended) spawn one of the drawn specs again, so
        that the worker has something to do (each shown as a note)."""
        due = [
            t.available if t.state != "running" else t.lease
            for t in self.model.values()
            if t.state in ("pending", "sleeping", "running")
        ]
        due = [d for d in due if d is not None]
        if due:
            seconds = max(500, math.ceil((min(due) - self.now) / 500) * 500)
            note(f"nudge: advance the clock by {seconds}")
            self.do_advance(seconds)
            return
        awaited = sorted(
            str(self.specs[i].steps[t.wait[0]].event)
            for i, t in self.model.items()
            if t.state == "sleeping" and t.wait is not None
        )
        if awaited:
            note(f"nudge: emit {awaited[0]}")
            self.do_emit(awaited[0], len(self.ids) % 10)
            return
        if len(self.ids) < MAX_TASKS and all(t.terminal for t in self.model.values()):
            self.respawns += 1
            index = (len(self.ids) - self.respawns) % len(self.ids)
            note(f"nudge: spawn the spec of task #{index} again")
            self.do_spawn(self.specs[self.ids[index]])

    def do_run_idle(self, concurrency: int = 4) -> None:
        self.portal.run(run_until_idle, self.client, self.options(concurrency=concurrency))
        for task_id, spec in self.specs.items():
            self.model[task_id] = settle(
                spec, self.model[task_id], self.now, self.events, locked=self.locked(task_id)
            )
        self.expect_exact()

    def do_run_some(self, k: int, grace: float) -> None:
        before = dict(self.model)
        self.portal.run(self._run_some, k, grace)
        self.adopt(before, "release" if grace == 0 else "end", None)

    async def _run_some(self, k: int, grace: float) -> None:
        worker = self.client.new_worker(self.options(grace=grace))
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            while worker.claimed_total < k and not await self._idle(worker):
                await trio.sleep(0.002)
            worker.shutdown()

    def run_gated(self, phase: str, body: Callable[[Gate], Awaitable[None]]) -> Gate:
        """Run `body` in the portal with a gate armed at `phase` for the task code."""
        gate = Gate(phase)
        self.gate = gate
        try:
            self.portal.run(body, gate)
        finally:
            self.gate = None
        return gate

    def do_crash(self, phase: str) -> None:
        before = dict(self.model)
        gate = self.run_gated(phase, self._crash)
        event(f"crash: stopped {gate.info[3]}" if gate.info else "crash: idle")
        self.adopt(before, "crash", gate)

    async def _crash(self, gate: Gate) -> None:
        await reap_expired(self.client)  # so that an expired run can reach the gate
        worker = self.client.new_worker(self.options())
        worker.hand_back_on_cancel = False  # a crashed process writes nothing more
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            while not gate.hit.is_set():
                with trio.move_on_after(0.002):
                    await gate.hit.wait()
                if not gate.hit.is_set() and await self._idle(worker):
                    break
            # Crash once queued writes have landed: whether a write queued a moment before
            # the crash survives is timing, and Hypothesis needs each example to replay
            # the same way (the model accepts either; tests/integration/test_writer.py
            # covers what a queued write may and may not do).
            while worker.pending_writes:
                await trio.sleep(0.002)
            nursery.cancel_scope.cancel()
        if gate.info is not None:
            assert gate.cancelled, "the crashed worker's step was not cancelled"

    def do_stall(self, phase: str) -> None:
        before = dict(self.model)
        gate = self.run_gated(phase, self._stall)
        event(f"stall: stalled {phase}" if self.zombie is not None else "stall: idle")
        self.adopt(before, "end", gate)

    async def _stall(self, gate: Gate) -> None:
        await reap_expired(self.client)  # so that an expired run can reach the gate
        worker = self.client.new_worker(self.options(grace=3600.0))
        worker.hand_back_on_cancel = False  # torn down as a crash: it writes nothing more
        zombie = Zombie(worker, gate, trio.CancelScope(), trio.Event(), [])
        zombie.count_beats()
        self.zombie = zombie  # from here on, teardown can always crash it

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with zombie.scope:
                    await worker.run(task_status=task_status)
            except Exception as ex:  # noqa: BLE001 - re-raised by the next rule
                zombie.errors.append(ex)
            finally:
                zombie.done.set()

        assert self.portal.nursery is not None
        await self.portal.nursery.start(run)
        while not gate.hit.is_set() and not await self._idle(worker):
            with trio.move_on_after(0.002):
                await gate.hit.wait()
        worker.shutdown()
        # A claim in flight when the worker looked idle may still reach the gate.
        async with trio.open_nursery() as race:

            async def first(flag: trio.Event) -> None:
                await flag.wait()
                race.cancel_scope.cancel()

            race.start_soon(first, gate.hit)
            race.start_soon(first, zombie.done)
        if not gate.hit.is_set():
            self.zombie = None
            if zombie.errors:
                raise zombie.errors[0]
            return
        # Let the other slot's attempt finish, and a claim in flight start its runs.
        while worker.in_flight > 1 or worker.claiming:
            await trio.sleep(0.002)
        # The stalled step's own checkpoint may still be queued: let it land, so that
        # what the model adopts now is what the database keeps showing.
        while worker.pending_writes:
            await trio.sleep(0.002)

    def do_unstall(self) -> None:
        """The stalled step goes on. If its worker still owns the run, the attempt
        finishes; if the lease expired meanwhile, every write it tries is fenced, except
        the transaction it was stalled in: that one already passed its fence and holds
        the run's row lock, so nobody could take the run over, and it commits."""
        zombie = self.zombie
        assert zombie is not None
        assert zombie.gate.info is not None
        task_id, attempt, step, phase = zombie.gate.info
        t = self.model[task_id]
        owned = not zombie.gate.cancelled and t.state == "running" and t.attempts == attempt
        if phase == "inside":
            assert owned, (
                f"a locked run changed hands: {t}\n  stalled at {zombie.gate.info}"
                f" cancelled={zombie.gate.cancelled} ({zombie.gate.why}) errors={zombie.errors}"
            )
        spec = self.specs[task_id]
        if owned and t.lease is not None and t.lease > self.now:
            resume = (step, phase)
            self.model[task_id] = run_attempt(spec, t, self.now, self.events, resume=resume)[1]
            event(f"unstall {phase}: the attempt goes on")
        elif owned and phase == "inside":
            self.model[task_id] = attrs.evolve(t, commits=(*t.commits, attempt))
            event("unstall inside: late commit, then fenced")
        else:
            event("unstall: fenced" if not zombie.gate.cancelled else "unstall: was cancelled")

        async def release() -> None:
            zombie.gate.release.set()
            await zombie.done.wait()
            if zombie.errors:
                raise zombie.errors[0]

        self.portal.run(release)
        self.zombie = None
        self.expect_exact()

    # -- idempotency keys and stale heartbeats -------------------------------------

    @precondition(lambda self: len(self.ids) - self.respawns < MAX_TASKS)
    @rule(spec=specs(), key=st.integers(0, KEYS - 1))
    @_guard
    def spawn_keyed(self, spec: Spec, key: int) -> None:
        """Spawn with an idempotency key drawn from a few: a repeated key names the task
        the first spawn created (whatever the new spec says) and writes nothing."""
        name = f"key{key}"
        known = self.keys.get(name)
        before = self.fingerprint()
        options = attrs.evolve(spec.options(), idempotency_key=name)

        async def go() -> dt.SpawnResult:
            return await self.client.spawn(self.definition, spec.to_json(), options=options)

        spawned = self.portal.run(go)
        if known is None:
            event("spawn keyed: a new key")
            assert spawned.created, f"the first spawn with key {name} created nothing"
            self.keys[name] = spawned.task_id
            self.ids.append(spawned.task_id)
            self.specs[spawned.task_id] = spec
            self.model[spawned.task_id] = new_task(spec, self.now)
        else:
            event("spawn keyed: a repeated key")
            assert (spawned.task_id, spawned.created) == (known, False), (
                f"key {name} named task {known}; spawning with it again gave {spawned}"
            )
            assert self.fingerprint() == before, f"a repeated key {name} wrote something"
        self.expect_exact()

    def fingerprint(self) -> str:
        """A digest of every row of the library's tables."""
        assert self.db is not None
        parts = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT x::text AS v FROM {}.{} x").format(
                sql.Identifier(self.schema), sql.Identifier(table)
            )
            for table in ("tasks", "runs", "checkpoints", "waits", "events")
        )
        query = sql.SQL("SELECT md5(coalesce(string_agg(v, '|' ORDER BY v), '')) AS d FROM ({}) a")
        row = self.db.execute(query.format(parts)).fetchone()
        assert row is not None
        return str(row["d"])

    @rule(index=st.integers(0, 7))
    @_guard
    def stale_beat(self, index: int) -> None:
        """A worker that held a run earlier (the run slept, or was handed back, and another
        worker claimed it since) was stalled in the middle of a heartbeat, which arrives
        now: it must renew nothing, and leave the new owner's lease as it was. With no
        former owner, a worker that never held the run beats for it."""
        assert self.db is not None
        rows = self.db.execute(
            sql.SQL(
                "SELECT r.run_id, r.task_id, r.worker_id, r.lease_expires_at,"
                " array(SELECT o.worker_id FROM {s}.owners o WHERE o.run_id = r.run_id"
                "   AND o.worker_id <> r.worker_id ORDER BY o.worker_id) AS former"
                " FROM {s}.runs r WHERE r.state = 'running'"
            ).format(s=sql.Identifier(self.schema))
        ).fetchall()
        if not rows:
            event("stale beat: nothing running")
            return
        order = {task_id: i for i, task_id in enumerate(self.ids)}
        rows.sort(key=lambda r: (order.get(r["task_id"], len(order)), str(r["run_id"])))
        row = rows[index % len(rows)]
        former = row["former"]
        old = former[index % len(former)] if former else "w0"
        event("stale beat: by a former owner" if former else "stale beat: by a stranger")
        held = self.portal.run(self.client.store.heartbeat, old, [row["run_id"]], float(10 * LEASE))
        assert held == {}, f"{old} renewed run {row['run_id']} owned by {row['worker_id']}"
        after = self.db.execute(
            sql.SQL("SELECT worker_id, lease_expires_at FROM {}.runs WHERE run_id = %s").format(
                sql.Identifier(self.schema)
            ),
            (row["run_id"],),
        ).fetchone()
        assert after == {
            "worker_id": row["worker_id"],
            "lease_expires_at": row["lease_expires_at"],
        }, f"a beat by {old} changed the lease of {row['worker_id']}: {row} -> {after}"
        self.expect_exact()

    # -- task trees -----------------------------------------------------------------

    @precondition(lambda self: len(self.trees) < MAX_TREES)
    @rule(tree=trees())
    @_guard
    def spawn_tree(self, tree: dict[str, Any]) -> None:
        """Spawn a tree and work the side queue until idle, so that it grows as far as
        its holds and joins let it."""
        tree = with_paths(tree, f"t{len(self.trees)}")
        self.trees.append(tree)
        for node in tree_nodes(tree):
            self.node_specs[node["path"]] = node

        async def go() -> dt.SpawnResult:
            return await self.side.spawn(self.side_tasks[0], tree, options=SIDE_OPTIONS)

        self.portal.run(go)
        self.portal.run(run_until_idle, self.side, self.options(concurrency=3))
        self.settle_zombie()

    @precondition(lambda self: self.trees)
    @rule(concurrency=st.sampled_from((1, 3)))
    @_guard
    def run_side(self, concurrency: int) -> None:
        """Work the side queue until idle: trees go as far as their holds and joins let
        them (a failing node cancels its subtree, a cancel notification for every
        worker)."""
        self.portal.run(run_until_idle, self.side, self.options(concurrency=concurrency))
        self.settle_zombie()

    @precondition(lambda self: self.trees)
    @rule(name=st.sampled_from(HOLDS))
    @_guard
    def emit_side(self, name: str) -> None:
        payload = len(self.side_events)
        self.portal.run(self.side.emit_event, name, payload)
        self.side_events[name] = payload

    @precondition(lambda self: self.trees)
    @rule(tree=st.integers(0, MAX_TREES - 1), node=st.integers(0, 63))
    @_guard
    def cancel_node(self, tree: int, node: int) -> None:
        """Cancel a node of a tree (the tree and node are drawn as numbers, mapped onto
        the nodes spawned so far in path order, three times in four onto the live ones
        only): it and every live descendant end
        cancelled at once; nothing else changes, but for a parent joining the node,
        which is woken."""
        prefix = f"t{tree % len(self.trees)}"
        snap = self.snapshot()
        nodes = sorted(
            (
                t
                for t in snap.tasks.values()
                if t["task_name"] == NODE_NAME
                and (t["path"] == prefix or t["path"].startswith(prefix + "."))
            ),
            key=lambda t: str(t["path"]),
        )
        live = [t for t in nodes if t["state"] in LIVE]
        pool = live if live and node % 4 else nodes  # mostly a live node, if there is one
        target = pool[node // 4 % len(pool)]
        below = descendants(snap, target["task_id"])
        zombie = self.zombie
        beats = zombie.beats_started if zombie is not None else 0
        done = self.portal.run(self.side.cancel, target["task_id"], "stateful cancel")
        live = target["state"] in LIVE
        assert done == live, f"cancel of {target} returned {done}"
        event(f"cancel node: {target['state']}, {len(below)} below")
        if done:
            self.cancelled_paths.add(target["path"])
        after = self.snapshot()
        assert set(after.tasks) == set(snap.tasks), "a cancel made or removed tasks"
        # The parent, if it was joining the node, is woken to see it cancelled.
        joiner = snap.waits.get(target["parent_task_id"]) if done else None
        woken = joiner is not None and joiner["event_name"] == f"$task:{target['task_id']}"
        for task_id, t in snap.tasks.items():
            want = t["state"]
            if (task_id == target["task_id"] or task_id in below) and want in LIVE:
                want = "cancelled"
            elif woken and task_id == target["parent_task_id"]:
                want = "pending"
            seen = after.tasks[task_id]["state"]
            assert seen == want, (
                f"cancel of node {target['path']} ({len(below)} below): task"
                f" {t.get('path') or task_id} is {seen}, want {want} (it was {t['state']})"
            )
        if done and zombie is not None and zombie.gate.info is not None:
            self.after_notify(zombie, beats)

    def check_trees(self, snap: Snapshot) -> None:
        """Each node spawned its children once each, in order, under itself; a completed
        node saw each child's real end through ctx.join; only a failing node fails; only
        a node cancelled directly, or under a failed or cancelled ancestor, is cancelled."""
        rows = [t for t in snap.tasks.values() if t["task_name"] == NODE_NAME]
        nodes = {t["path"]: t for t in rows}
        assert len(nodes) == len(rows), "a node was spawned twice"
        for path, t in nodes.items():
            spec = self.node_specs[path]
            parent = path.rpartition(".")[0]
            want_parent = nodes[parent]["task_id"] if parent else None
            assert t["parent_task_id"] == want_parent, f"node {path} has a wrong parent"
            kids = [nodes.get(f"{path}.{i}") for i in range(len(spec["kids"]))]
            spawned = [k for k in kids if k is not None]
            assert kids[: len(spawned)] == spawned, f"node {path} skipped a child"
            state = t["state"]
            if state in ("sleeping", "completed", "failed"):
                assert len(spawned) == len(kids), f"{state} node {path} lacks children"
            if state == "completed":
                assert spec["fail"] == "none", f"node {path} should have failed"
                ends = [k["state"] for k in spawned]
                want = {"path": path, "kids": ends}
                assert t["result"] == want, f"node {path}: result {t['result']}, kids {ends}"
            elif state == "failed":
                assert spec["fail"] != "none", f"node {path} failed: {t['error']}"
            elif state == "cancelled":
                ancestors = [path[:i] for i, c in enumerate(path) if c == "."]
                assert path in self.cancelled_paths or any(
                    nodes[a]["state"] in ("failed", "cancelled") for a in ancestors
                ), f"node {path} was cancelled ({t['cancel_reason']}) with no reason to be"

    # -- event races ----------------------------------------------------------------

    @precondition(lambda self: len(self.races) < MAX_RACES)
    @rule(free=st.integers(0, 3), emitters=st.integers(1, 3))
    @_guard
    def race(self, free: int, emitters: int) -> None:
        """Waiters and emits of one event, from several connections at once. One waiter
        is stopped inside its await_event (see `Hold`) until every emit has returned or
        waits for it; `free` more waiters race the emits unhindered. Then: every waiter
        was woken exactly once (the emits' counts add up to the runs woken by an event),
        none is left waiting, each returns a payload one of the emits carried."""
        number = len(self.races)
        name = f"x{number}"
        payloads = [number * 10 + i for i in range(emitters)]
        woken, ids = self.portal.run(self._race, name, free, payloads)
        self.races.append((ids, set(payloads)))
        snap = self.snapshot()
        check_every_task(snap)
        runs = [run for i in ids for run in snap.runs[i]]
        assert runs[0]["wake_reason"] == "event", f"the held waiter did not suspend: {runs[0]}"
        woke = sum(run["wake_reason"] == "event" for run in runs)
        event(f"race: {woke} of {len(ids)} waiters suspended")
        assert sum(woken) == woke, f"emits woke {woken}; runs woken by the event: {runs}"
        for i in ids:
            t = snap.tasks[i]
            assert t["state"] == "completed", f"waiter {t} of {name} did not complete"
            assert t["result"] in payloads, f"waiter {t} got no payload of {payloads}"
        self.settle_zombie()

    async def hold_point(self, ctx: dt.TaskContext) -> None:
        hold = self.hold
        if hold is None or hold.task_id != ctx.task_id or hold.reached.is_set():
            return
        hold.reached.set()
        await hold.locked.wait()

    async def _race(
        self, name: str, free: int, payloads: list[int]
    ) -> tuple[list[int], list[UUID]]:
        side, waiter = self.side, self.side_tasks[1]
        ids = []
        for i in range(free + 1):
            params = {"event": name, "held": i == 0}
            ids.append((await side.spawn(waiter, params, options=SIDE_OPTIONS)).task_id)
        hold = Hold(ids[0])
        self.hold = hold
        woken: list[int] = []

        async def emit(payload: int) -> None:
            woken.append(await side.emit_event(name, payload))

        worker = side.new_worker(self.options(concurrency=free + 1, grace=60.0))
        try:
            async with trio.open_nursery() as nursery, side.connection() as monitor:
                await nursery.start(worker.run)
                await hold.reached.wait()
                await nursery.start(self._hold_row, hold)
                waiter_pid = await _blocked_by(monitor, hold.pid)
                async with trio.open_nursery() as emits:
                    for payload in payloads:
                        emits.start_soon(emit, payload)
                    await _parked(monitor, waiter_pid, len(payloads), woken)
                    if not RECLAIM:
                        # The attempts in flight finish, but the worker claims nothing
                        # more: woken at the instant it suspends, the held waiter could
                        # be claimed again by this worker before its suspended attempt
                        # has unwound (see RECLAIM).
                        worker.shutdown()
                    hold.release.set()
                names = side.registered
                while RECLAIM and (worker.busy or await side.store.claimable_count([SIDE], names)):
                    await trio.sleep(0.002)
                worker.shutdown()
            if not RECLAIM:
                await run_until_idle(side, self.options(concurrency=free + 1))
        finally:
            self.hold = None
        return woken, ids

    async def _hold_row(
        self, hold: Hold, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with self.side.connection() as conn:
            query = sql.SQL("SELECT 1 FROM {}.tasks WHERE task_id = %s FOR UPDATE")
            await conn.execute(query.format(sql.Identifier(self.schema)), (hold.task_id,))
            row = await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone()
            assert row is not None
            hold.pid = row["pid"]
            hold.locked.set()
            task_status.started()
            await hold.release.wait()
            await conn.rollback()

    # -- invariants and teardown ----------------------------------------------------

    @invariant()
    @_guard
    def database_invariants(self) -> None:
        snap = self.snap if self.snap is not None else self.snapshot()
        check_database(self.specs, snap)
        check_every_task(snap)
        self.check_trees(snap)
        check_failure_reports(self.failures.take())
        self.snap = None

    def teardown(self) -> None:
        try:
            if not self.broken:
                self.converge()
        except BaseException:
            first_failure()
            raise
        finally:
            self._cleanup()

    def converge(self) -> None:
        """Emit every event, then advance the clock a lot and run until idle until nothing
        changes: every task must end (invariant 8)."""
        if self.zombie is not None:
            self.do_unstall()
        for name in EVENTS:
            self.do_emit(name, 42)
        previous: dict[UUID, TState] = {}
        for _ in range(100):
            if self.model == previous or all(t.terminal for t in self.model.values()):
                break
            previous = dict(self.model)
            self.do_advance(10_000)
            self.do_run_idle()
        not_done = {self.describe(i): t for i, t in self.model.items() if not t.terminal}
        for t in self.model.values():
            event(f"end: {t.state} after {t.attempts} attempt(s)")
        assert not not_done, f"tasks never ended: {not_done}"
        snap = self.snapshot()
        check_database(self.specs, snap)
        if self.trees:
            # Every hold emitted, the side queue worked until it is idle: every tree ends.
            for name in HOLDS:
                self.portal.run(self.side.emit_event, name, 42)
            self.portal.run(run_until_idle, self.side, self.options())
            snap = self.snapshot()
            left = [
                t
                for t in snap.tasks.values()
                if t["state"] not in ("completed", "failed", "cancelled")
            ]
            assert not left, f"side tasks never ended: {left}"
        check_every_task(snap)
        self.check_trees(snap)
        check_failure_reports(self.failures.take())

    def _cleanup(self) -> None:
        zombie, self.zombie = self.zombie, None
        try:
            if zombie is not None:

                async def crash() -> None:
                    zombie.scope.cancel()
                    await zombie.done.wait()

                self.portal.run(crash)
            if self.side_resident is not None:
                self.portal.run(self.side_resident.close)
                self.side_resident = None
            if self.resident is not None:
                self.portal.run(self.resident.close)
                self.resident = None
            left = self.portal.children()
            assert self.broken or left == 0, "a worker or client outlived its example"
        finally:
            if self.db is not None:
                self.db.close()
                self.db = None
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema))
                )


# -- the test -------------------------------------------------------------------------


def with_app_name(url: str, name: str) -> str:
    """`url` with application_name set, so this test's connections can be counted."""
    if "://" not in url:
        return f"{url} application_name={name}"
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "application_name"]
    query.append(("application_name", name))
    return urlunsplit(parts._replace(query=urlencode(query)))


def connections(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND pid <> pg_backend_pid()",
            (APP_NAME,),
        ).fetchone()
        assert row is not None
        return int(row[0])


def wait_no_connections(url: str) -> int:
    """Closed connections leave pg_stat_activity when their backend exits, a moment
    after the client hangs up: poll briefly."""
    count = connections(url)
    for _ in range(200):
        if count == 0:
            break
        threading.Event().wait(0.025)
        count = connections(url)
    return count


@contextmanager
def no_leaks(url: str) -> Iterator[None]:
    def threads() -> set[threading.Thread]:
        # trio keeps idle worker threads ("Trio thread N") cached for a few seconds
        # after to_thread calls (query cancellation); they are not ours to join.
        return {t for t in threading.enumerate() if not t.name.startswith("Trio thread")}

    before = threads()
    assert wait_no_connections(url) == 0
    yield
    assert threads() <= before, f"threads leaked: {threads() - before}"
    assert wait_no_connections(url) == 0, "database connections leaked"


def profile() -> settings:
    """The profile, with DURABLE_STATEFUL_EXAMPLES=n running n examples instead and
    DURABLE_STATEFUL_SHRINK=0 reporting a failure without shrinking it (both used by
    tests/stateful/seeded_bugs.py)."""
    chosen = settings.get_profile(PROFILE)
    examples = os.environ.get("DURABLE_STATEFUL_EXAMPLES")
    if examples is not None:
        chosen = settings(chosen, max_examples=int(examples))
    if os.environ.get("DURABLE_STATEFUL_SHRINK") == "0":
        chosen = settings(chosen, phases=[p for p in chosen.phases if p is not Phase.shrink])
    return chosen


def test_stateful_machine(pg_url: str) -> None:
    url = with_app_name(pg_url, APP_NAME)
    STATS.clear()
    failures = FailureLog()
    logger = logging.getLogger("durable_trio.worker")
    logger.addHandler(failures)
    try:
        with no_leaks(url), Portal() as portal:
            run_state_machine_as_test(
                lambda: StatefulMachine(url, portal, failures),
                settings=profile(),
            )
    finally:
        logger.removeHandler(failures)
        report = os.environ.get("DURABLE_STATEFUL_REPORT")
        if report:
            with open(report, "w") as out:
                out.writelines(f"{n}\t{what}\n" for what, n in sorted(STATS.items()))
