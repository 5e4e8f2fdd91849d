"""`durable-trio worker APP`: run a worker until SIGINT or SIGTERM.

APP is ``module:attribute`` (the module imported with the current directory on the path),
where the attribute is a task (``@dt.task`` function or ``dt.Task`` subclass), a list of
tasks, or a callable that takes the `Durable` client and registers tasks on it.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import attrs
import click
import trio

import durable_trio as dt

from ._common import BadInput, client, run
from ._ops import parse_cutoff

log = logging.getLogger("durable_trio.worker")


@click.command()
@click.argument("app")
@click.option(
    "--queue", "queues", multiple=True, help="Queue to work (repeatable; default: default)."
)
@click.option("--concurrency", type=int, default=8, show_default=True)
@click.option(
    "--prefetch",
    type=int,
    default=0,
    show_default=True,
    help="Runs claimed ahead of free slots, started as slots free.",
)
@click.option("--claim-timeout", type=float, default=30.0, show_default=True, help="Seconds.")
@click.option("--poll-interval", type=float, default=1.0, show_default=True, help="Seconds.")
@click.option(
    "--shutdown-grace",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds runs may finish after the first signal.",
)
@click.option("--worker-id", default=None, help="Shown in the runs table (default host:pid).")
@click.option(
    "--retention",
    default=None,
    help="Remove finished tasks and events older than this (30d, 12h), one worker at a time.",
)
@click.option(
    "--version",
    "version",
    default=None,
    help="Claim only tasks this version (or no worker yet) ran, and stamp it on them "
    "(WorkerOptions.version; docs/versioning.md).",
)
@click.option(
    "--no-migrate",
    is_flag=True,
    help="Do not create or upgrade the schema (connect(migrate=False)): for a role that may "
    "not change it; the schema must be current.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    default="INFO",
    show_default=True,
)
def worker(
    app: str,
    queues: tuple[str, ...],
    concurrency: int,
    prefetch: int,
    claim_timeout: float,
    poll_interval: float,
    shutdown_grace: float,
    worker_id: str | None,
    retention: str | None,
    version: str | None,
    no_migrate: bool,
    log_level: str,
) -> None:
    """Run a worker for the tasks APP (module:attribute) registers.

    SIGINT or SIGTERM: stop claiming, let runs finish for --shutdown-grace, then hand the
    rest back without spending an attempt. A second signal stops at once, handing the
    runs back without waiting for them (checkpoints not yet written are lost).
    """
    logging.basicConfig(
        level=getattr(logging, log_level), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    target = load_app(app)
    options = dt.WorkerOptions(
        concurrency=concurrency,
        prefetch=prefetch,
        claim_timeout=claim_timeout,
        poll_interval=poll_interval,
        shutdown_grace=shutdown_grace,
        queues=list(queues) or None,
        retention=_age(retention),
        version=version,
    )
    if worker_id is not None:
        options = attrs.evolve(options, worker_id=worker_id)
    run(lambda: serve(target, options, migrate=not no_migrate))


async def serve(target: Any, options: dt.WorkerOptions, *, migrate: bool = True) -> None:
    queue = options.queues[0] if options.queues else "default"
    async with client(queue, migrate=migrate) as c:
        register(c, target)
        if not c.registered:
            raise BadInput("the app registered no task: nothing to run")
        w = c.new_worker(options)
        async with trio.open_nursery() as nursery:

            async def work() -> None:
                await w.run()
                nursery.cancel_scope.cancel()  # done: stop listening for signals

            await nursery.start(_watch_signals, w, nursery.cancel_scope)
            nursery.start_soon(work)


async def _watch_signals(
    w: dt.Worker,
    everything: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        first = True
        async for signum in signals:
            name = signal.Signals(signum).name
            if first:
                log.info("%s: shutting down gracefully (signal again to stop now)", name)
                w.shutdown()
                first = False
            else:
                log.warning("%s again: stopping now", name)
                everything.cancel()


def load_app(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise BadInput(f"APP must be module:attribute, got {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as ex:
        raise BadInput(f"cannot import {module_name!r}: {ex}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise BadInput(f"module {module_name!r} has no {attribute!r}") from None


def register(c: dt.Durable, target: Any) -> None:
    """Register what APP names: a task, a list of tasks, or a callable that registers."""
    if isinstance(target, dt.TaskDefinition) or (
        isinstance(target, type) and issubclass(target, dt.Task)
    ):
        c.register(target)
    elif callable(target):
        target(c)
    elif isinstance(target, Iterable) and not isinstance(target, (str, bytes)):
        c.register(*target)
    else:
        raise BadInput(
            f"APP must name a task, a list of tasks or a function taking the client; got {target!r}"
        )


def _age(text: str | None) -> timedelta | None:
    if text is None:
        return None
    age = parse_cutoff(text, "--retention")
    if not isinstance(age, timedelta):
        raise BadInput(f"--retention must be an age like 30d or 12h, got {text!r}")
    return age
