"""Feeding and steering work: spawn, cancel, emit."""

from __future__ import annotations

import click

import durable_trio as dt

from ._common import (
    Nothing,
    json_option,
    parse_json,
    parse_uuid,
    print_json,
    with_client,
)


@click.command()
@click.argument("name")
@click.option("--params", default="null", show_default=True, help="Params as JSON.")
@click.option("--queue", default="default", show_default=True)
@click.option("--max-attempts", type=int, default=None, help="Attempts before failing.")
@click.option("--delay", type=float, default=None, help="Seconds before it may start.")
@click.option("--priority", type=int, default=None, help="Higher is claimed first.")
@click.option("--idempotency-key", default=None, help="Spawn at most once per key.")
@json_option
def spawn(
    name: str,
    params: str,
    queue: str,
    max_attempts: int | None,
    delay: float | None,
    priority: int | None,
    idempotency_key: str | None,
    as_json: bool,
) -> None:
    """Spawn task NAME with JSON params (a worker that registered NAME runs it)."""
    values = parse_json(params, "--params")
    options = dt.SpawnOptions(
        max_attempts=5 if max_attempts is None else max_attempts,
        delay=delay,
        priority=priority or 0,
        idempotency_key=idempotency_key,
    )

    result = with_client(lambda c: c.spawn_by_name(name, values, options=options), queue)
    if as_json:
        print_json(result)
    else:
        verb = "spawned" if result.created else "already spawned (idempotency key)"
        click.echo(f"{verb} {name} as task {result.task_id}")


@click.command()
@click.argument("task_id")
@click.option("--reason", default="cancelled from the command line", show_default=True)
def cancel(task_id: str, reason: str) -> None:
    """Cancel a task and its unfinished descendants."""
    target = parse_uuid(task_id)

    if not with_client(lambda c: c.cancel(target, reason)):
        raise Nothing(f"task {target} had already ended: nothing to cancel")
    click.echo(f"cancelled task {target}")


@click.command()
@click.argument("name")
@click.option("--payload", default="null", show_default=True, help="Payload as JSON.")
@click.option("--queue", default="default", show_default=True)
@json_option
def emit(name: str, payload: str, queue: str, as_json: bool) -> None:
    """Emit event NAME; tasks waiting for it wake up (events are sticky)."""
    value = parse_json(payload, "--payload")

    woken = with_client(lambda c: c.emit_event(name, value), queue)
    if as_json:
        print_json({"event": name, "queue": queue, "woken": woken})
    else:
        click.echo(f"emitted {name} on {queue}: woke {woken} task(s)")
