"""Operating the fleet: the workers registry, retention."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import click

import durable_trio as dt

from ._common import BadInput, json_option, print_json, show_rows, when, with_client

_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_cutoff(text: str | None, what: str) -> datetime | timedelta | None:
    """An age such as 30d, 12h, 90m, 45s, 2w, or an ISO 8601 time with a UTC offset."""
    if text is None:
        return None
    age = _AGE.fullmatch(text.strip())
    if age:
        return timedelta(seconds=float(age[1]) * _UNIT[age[2]])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(
            f"{what} must be an age like 30d, 12h, 90m or an ISO time, got {text!r}"
        ) from None
    if when.tzinfo is None:
        raise BadInput(f"{what} needs a UTC offset (e.g. 2027-01-01T00:00:00Z), got {text!r}")
    return when


@click.command()
@json_option
def workers(as_json: bool) -> None:
    """List the live workers."""
    columns = ("worker", "host", "pid", "queues", "tasks", "concurrency", "started", "seen")
    show_rows(with_client(lambda c: c.workers()), as_json, columns, _worker_row)


def _worker_row(w: dt.WorkerInfo) -> tuple[str, ...]:
    queues, names = ", ".join(w.queues), ", ".join(w.task_names)
    started, seen = when(w.started_at), when(w.last_seen_at)
    return (w.worker_id, w.host, str(w.pid), queues, names, str(w.concurrency), started, seen)


@click.command()
@click.option("--finished-before", default=None, help="Age (30d, 12h) or ISO time.")
@click.option("--events-before", default=None, help="Age (30d, 12h) or ISO time.")
@click.option("--batch", type=int, default=1000, show_default=True)
@click.option(
    "--duty",
    type=float,
    default=1.0,
    show_default=True,
    help="Share of the time spent removing (0.2 beside busy workers: rests between batches).",
)
@json_option
def cleanup(
    finished_before: str | None,
    events_before: str | None,
    batch: int,
    duty: float,
    as_json: bool,
) -> None:
    """Remove finished tasks and events older than a cut-off (in batches no claim waits on)."""
    tasks_cut = parse_cutoff(finished_before, "--finished-before")
    events_cut = parse_cutoff(events_before, "--events-before")
    if tasks_cut is None and events_cut is None:
        raise BadInput("give --finished-before and/or --events-before")

    removed = with_client(
        lambda c: c.cleanup(
            finished_before=tasks_cut, events_before=events_cut, batch=batch, duty=duty
        )
    )
    if as_json:
        print_json(removed)
    else:
        click.echo(
            f"removed {removed.tasks} task(s), {removed.runs} run(s), "
            f"{removed.checkpoints} checkpoint(s), {removed.events} event(s)"
        )
