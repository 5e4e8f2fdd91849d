"""Schedules from the command line: schedules ls | add | rm | pause | resume."""

from __future__ import annotations

import click

import durable_trio as dt

from ._common import (
    Nothing,
    client,
    json_option,
    parse_json,
    print_json,
    run,
    show_rows,
    when,
    with_client,
)


@click.group()
def schedules() -> None:
    """Cron schedules: list, add (or replace), remove, pause, resume."""


@schedules.command("ls")
@json_option
def schedules_ls(as_json: bool) -> None:
    """List every schedule."""
    columns = ("id", "task", "queue", "cron", "timezone", "missed", "next", "last", "paused")
    show_rows(with_client(lambda c: c.schedules()), as_json, columns, _schedule_row)


def _schedule_row(s: dt.ScheduleInfo) -> tuple[str, ...]:
    fired = (when(s.next_fire_at), when(s.last_fired_at), "yes" if s.paused else "")
    return (s.schedule_id, s.task_name, s.queue, s.cron, s.timezone, s.missed, *fired)


@schedules.command("add")
@click.argument("schedule_id")
@click.argument("task_name")
@click.option("--cron", required=True, help='Five fields or @hourly, @daily... ("30 2 * * *").')
@click.option("--timezone", default="UTC", show_default=True, help="IANA time zone.")
@click.option("--params", default="null", show_default=True, help="Params as JSON.")
@click.option("--queue", default="default", show_default=True)
@click.option(
    "--missed",
    type=click.Choice(["skip", "latest", "all"]),
    default="latest",
    show_default=True,
    help="Slots missed while no worker ran.",
)
@json_option
def schedules_add(
    schedule_id: str,
    task_name: str,
    cron: str,
    timezone: str,
    params: str,
    queue: str,
    missed: str,
    as_json: bool,
) -> None:
    """Create or replace schedule SCHEDULE_ID spawning TASK_NAME at every cron slot."""
    values = parse_json(params, "--params")

    info = with_client(
        lambda c: c.schedule(
            schedule_id,
            task_name,
            values,
            cron=cron,
            timezone=timezone,
            options=dt.SpawnOptions(queue=queue),
            missed=missed,  # type: ignore[arg-type]  # click.Choice checked it
        ),
        queue,
    )
    if as_json:
        print_json(info)
    else:
        next_slot = "paused" if info.next_fire_at is None else info.next_fire_at.isoformat()
        click.echo(
            f"schedule {info.schedule_id}: {info.task_name} at {info.cron}; next {next_slot}"
        )


def _toggle(verb: str, schedule_id: str) -> None:
    async def go() -> bool:
        async with client() as c:
            action = {
                "removed": c.unschedule,
                "paused": c.pause_schedule,
                "resumed": c.resume_schedule,
            }[verb]
            return await action(schedule_id)

    if not run(go):
        raise Nothing(
            f"schedule {schedule_id!r} was already {verb if verb != 'removed' else 'gone'}"
        )
    click.echo(f"schedule {schedule_id} {verb}")


@schedules.command("rm")
@click.argument("schedule_id")
def schedules_rm(schedule_id: str) -> None:
    """Remove a schedule (tasks it spawned are not touched)."""
    _toggle("removed", schedule_id)


@schedules.command("pause")
@click.argument("schedule_id")
def schedules_pause(schedule_id: str) -> None:
    """Stop spawning until resumed."""
    _toggle("paused", schedule_id)


@schedules.command("resume")
@click.argument("schedule_id")
def schedules_resume(schedule_id: str) -> None:
    """Spawn again from the first slot after now."""
    _toggle("resumed", schedule_id)
