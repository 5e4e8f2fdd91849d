"""`durable-trio` (also `python -m durable_trio`): run workers, feed and inspect work.

Global options: ``--url`` (default ``$DURABLE_DATABASE_URL``), ``--schema`` (default
``durable``), ``--version``. Reads take ``--json``. Exit codes: 0 done; 1 the command ran
but found nothing to act on (no such task, a task that already ended); 2 bad input or
usage; 3 the database is unreachable or its schema is not ready; 128 + N when signal N
(SIGTERM, SIGHUP) stopped ``postgres``, after its cleanup. Errors are one line on
standard error, with any password in a URL redacted.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from ._admin import migrate, postgres, quickstart
from ._common import Settings, cli_errors
from ._ops import cleanup, workers
from ._schedules import schedules
from ._tasks import queues, retry, tasks
from ._work import cancel, emit, spawn
from ._worker import worker

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="durable_trio", prog_name="durable-trio")
@click.option(
    "--url",
    envvar="DURABLE_DATABASE_URL",
    default=None,
    help="Database URL (default: $DURABLE_DATABASE_URL).",
)
@click.option("--schema", default="durable", show_default=True, help="durable_trio schema.")
@click.pass_context
def app(ctx: click.Context, url: str | None, schema: str) -> None:
    """Durable workflows for trio, with all state in PostgreSQL."""
    ctx.obj = Settings(url=url, schema=schema)


for command in (
    worker,
    tasks,
    spawn,
    cancel,
    retry,
    emit,
    queues,
    workers,
    schedules,
    cleanup,
    migrate,
    postgres,
    quickstart,
):
    app.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (documented above)."""
    with cli_errors() as outcome:
        code = app.main(
            args=list(argv) if argv is not None else None,
            prog_name="durable-trio",
            standalone_mode=False,
        )
        if isinstance(code, int):  # a command's click.exceptions.Exit, returned by click
            outcome.code = code
    return outcome.code
