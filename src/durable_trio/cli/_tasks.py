"""Seeing and steering tasks: tasks ls / show, retry, queues."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import click
from rich.table import Table
from rich.tree import Tree

import durable_trio as dt

from ._common import (
    BadInput,
    client,
    console,
    json_option,
    parse_uuid,
    plain,
    print_json,
    run,
    when,
    with_client,
)
from ._ops import parse_cutoff

STATES = [s.value for s in dt.TaskState]


def _age(value: timedelta | None) -> str:
    return "" if value is None else f"{value.total_seconds():.1f}s"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(plain(value), sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@click.group()
def tasks() -> None:
    """List tasks and show one in full."""


@tasks.command("ls")
@click.option("--queue", default=None, help="Only this queue (default: every queue).")
@click.option("--state", type=click.Choice(STATES), default=None)
@click.option("--name", default=None, help="Only tasks of this name.")
@click.option("--parent", default=None, help="Only children of this task id.")
@click.option("--created-after", default=None, help="Age (2h, 30d) or ISO time.")
@click.option("--created-before", default=None, help="Age (2h, 30d) or ISO time.")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--after", default=None, help="Cursor: the next_after of the previous page.")
@json_option
def tasks_ls(
    queue: str | None,
    state: str | None,
    name: str | None,
    parent: str | None,
    created_after: str | None,
    created_before: str | None,
    limit: int,
    after: str | None,
    as_json: bool,
) -> None:
    """List tasks, oldest first, a page at a time."""
    kwargs: dict[str, Any] = {
        "queue": queue,
        "state": state,
        "name": name,
        "parent": parse_uuid(parent) if parent else None,
        "limit": limit,
        "after": parse_uuid(after) if after else None,
    }

    async def go() -> dt.TaskPage:
        async with client() as c:
            now = await c.store.now()
            for key, text in (("created_after", created_after), ("created_before", created_before)):
                cut = parse_cutoff(text, f"--{key.replace('_', '-')}")
                kwargs[key] = now - cut if isinstance(cut, timedelta) else cut
            return await c.list_tasks(**kwargs)

    page = run(go)
    if as_json:
        print_json(page)
        return
    table = Table("task", "name", "queue", "state", "attempts", "created", "finished")
    for t in page.items:
        table.add_row(
            str(t.task_id),
            t.task_name,
            t.queue,
            t.state.value,
            f"{t.attempts}/{t.max_attempts}",
            when(t.created_at),
            when(t.finished_at),
        )
    out = console()
    out.print(table)
    if page.next_after is not None:
        out.print(f"more: --after {page.next_after}")


@tasks.command("show")
@click.argument("task_id")
@json_option
def tasks_show(task_id: str, as_json: bool) -> None:
    """One task in full: attempts with their errors, steps with values, what it waits
    for, and its children."""
    target = parse_uuid(task_id)

    async def go() -> tuple[dt.TaskInfo, list[dt.StepInfo]]:
        async with client() as c:
            return await c.get_task(target), await c.steps(target)

    info, steps = run(go)
    if as_json:
        print_json({"task": info, "steps": steps})
        return
    show_task(info, steps)


def show_task(info: dt.TaskInfo, steps: list[dt.StepInfo]) -> None:
    """Print a task as `durable-trio tasks show` does (the quickstart uses it too)."""
    out = console()
    out.print(
        f"[bold]{info.task_name}[/bold] {info.task_id}  queue={info.queue}  "
        f"state=[bold]{info.state.value}[/bold]  attempts={info.attempts}/{info.max_attempts}"
    )
    out.print(
        f"created {when(info.created_at)}  started {when(info.first_started_at)}  "
        f"finished {when(info.finished_at)}"
    )
    out.print(f"params {_short(info.params)}")
    if info.headers:
        out.print(f"headers {_short(info.headers)}")
    if info.state is dt.TaskState.COMPLETED:
        out.print(f"result {_short(info.result, 200)}")
    if info.cancel_reason:
        out.print(f"cancelled: {info.cancel_reason}")
    if info.waiting_for is not None:
        out.print(f"waiting for {_short(info.waiting_for, 200)}")
    runs = Table("attempt", "state", "worker", "claimed", "finished", "error", title="attempts")
    for r in info.runs:
        error = "" if r.error is None else f"{r.error.type}: {r.error.message}"
        runs.add_row(
            str(r.attempt),
            r.state.value,
            r.worker_id or "",
            when(r.claimed_at),
            when(r.finished_at),
            error,
        )
    out.print(runs)
    table = Table("step", "kind", "attempt", "value", "written", title="steps")
    for s in steps:
        attempt = "" if s.attempt is None else str(s.attempt)
        table.add_row(s.name, s.kind, attempt, _short(s.value), when(s.created_at))
    out.print(table)
    if info.children:
        tree = Tree(f"children ({info.child_count})")
        for child in info.children:
            tree.add(f"{child.task_name} {child.task_id} {child.state.value}")
        out.print(tree)


@click.command()
@click.argument("task_id")
@click.option("--max-attempts", type=int, default=None, help="New total of attempts.")
@click.option("--from-scratch", is_flag=True, help="Forget its checkpoints: start over.")
@json_option
def retry(task_id: str, max_attempts: int | None, from_scratch: bool, as_json: bool) -> None:
    """Give a failed or cancelled task a new attempt (resuming from its checkpoints)."""
    target = parse_uuid(task_id)

    result = with_client(
        lambda c: c.retry(target, max_attempts=max_attempts, from_scratch=from_scratch)
    )
    if as_json:
        print_json(result)
    else:
        click.echo(f"task {result.task_id}: attempt {result.attempt} is pending")


@click.command()
@click.option("--queue", default=None, help="One queue (default: every queue).")
@click.option("--window", default="1h", show_default=True, help="Failures counted since.")
@click.option(
    "--unserved-after",
    default="5m",
    show_default=True,
    help="Due this long with no live worker for the task name: unserved.",
)
@json_option
def queues(queue: str | None, window: str, unserved_after: str, as_json: bool) -> None:
    """Counts by state, runs due now and the oldest due run's age, and runs no live
    worker has registered the task name of, per task name."""
    span = _span(window, "--window")
    after = _span(unserved_after, "--unserved-after")

    stats = with_client(lambda c: c.queue_stats(queue, window=span, unserved_after=after))
    if as_json:
        print_json(stats)
        return
    table = Table(
        "queue",
        "task",
        "pending",
        "sleeping",
        "running",
        "due now",
        "oldest due",
        f"failed ({window})",
        f"cancelled ({window})",
        f"unserved ({unserved_after})",
    )
    for s in stats.by_name:
        table.add_row(
            s.queue,
            s.task_name,
            str(s.pending),
            str(s.sleeping),
            str(s.running),
            str(s.due_now),
            _age(s.oldest_due_age),
            str(s.failed),
            str(s.cancelled),
            _unserved(s.unserved_runs, s.oldest_unserved_age),
        )
    table.add_row(
        stats.queue or "(all)",
        "(total)",
        str(stats.pending),
        str(stats.sleeping),
        str(stats.running),
        str(stats.due_now),
        _age(stats.oldest_due_age),
        str(stats.failed),
        str(stats.cancelled),
        _unserved(stats.unserved_runs, stats.oldest_unserved_age),
    )
    console().print(table)


def _span(text: str, what: str) -> timedelta:
    span = parse_cutoff(text, what)
    if not isinstance(span, timedelta):
        raise BadInput(f"{what} must be an age like 1h or 30m, got {text!r}")
    return span


def _unserved(runs: int, oldest: timedelta | None) -> str:
    """The run count, with the oldest one's age when there are any ("3, oldest 412.0s")."""
    return f"{runs}, oldest {_age(oldest)}" if runs else "0"
