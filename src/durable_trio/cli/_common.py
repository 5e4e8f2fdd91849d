"""What every command shares: settings, a client, errors as exit codes, and output."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, TypeVar
from uuid import UUID

import attrs
import click
import trio
from rich.console import Console
from rich.table import Table

import durable_trio as dt

T = TypeVar("T")

OK, NOTHING, BAD_INPUT, UNAVAILABLE = 0, 1, 2, 3


@attrs.frozen
class Settings:
    url: str | None
    schema: str


class BadInput(click.ClickException):
    """Bad input found by a command (not by click's parser): one line, exit code 2."""

    exit_code = BAD_INPUT

    def show(self, file: Any = None) -> None:
        _say(self.message)


class Nothing(Exception):
    """The command ran but found nothing to act on (exit code 1)."""


@attrs.define
class Outcome:
    code: int = OK


@contextmanager
def cli_errors() -> Iterator[Outcome]:
    """Turn what a command raises into one line on stderr and a documented exit code."""
    outcome = Outcome()
    try:
        yield outcome
    except Nothing as ex:
        click.echo(str(ex), err=True)
        outcome.code = NOTHING
    except click.exceptions.Exit as ex:
        outcome.code = ex.exit_code
    except click.exceptions.Abort:
        outcome.code = UNAVAILABLE
    except click.ClickException as ex:
        ex.show()
        outcome.code = ex.exit_code
    except (dt.InvalidInput, dt.UnknownTask) as ex:
        _say(f"{type(ex).__name__}: {ex}")
        outcome.code = BAD_INPUT
    except (dt.DatabaseUnavailable, dt.ConfigurationError) as ex:
        _say(f"{type(ex).__name__}: {ex}")
        outcome.code = UNAVAILABLE
    except (dt.TaskNotFound, dt.ScheduleNotFound, dt.RetryRefused) as ex:
        _say(str(ex))
        outcome.code = NOTHING
    except dt.DurableError as ex:
        _say(f"{type(ex).__name__}: {ex}")
        outcome.code = BAD_INPUT


def _say(message: str) -> None:
    """One line on stderr (libpq's messages carry newlines and tabs)."""
    click.echo("error: " + " ".join(message.split()), err=True)


def settings() -> Settings:
    found = click.get_current_context().find_object(Settings)
    assert found is not None, "commands run under the durable-trio group"
    return found


@asynccontextmanager
async def client(queue: str = "default", *, migrate: bool = False) -> AsyncIterator[dt.Durable]:
    """A client on the command's URL and schema. Commands other than ``migrate`` and
    ``worker`` do not change the schema: they say so when it is not ready."""
    s = settings()
    async with dt.Durable.connect(s.url, schema=s.schema, queue=queue, migrate=migrate) as c:
        yield c


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run one async step of a command under trio, unwrapping a lone error from a
    nursery so it reaches `cli_errors` as itself."""
    try:
        return trio.run(fn)
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise


def with_client(call: Callable[[dt.Durable], Awaitable[T]], queue: str = "default") -> T:
    """`run` one call on a client of the command's URL and schema (see `client`)."""

    async def go() -> T:
        async with client(queue) as c:
            return await call(c)

    return run(go)


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as ex:
        raise BadInput(f"{what} is not JSON: {ex}") from None


def parse_uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise BadInput(f"{text!r} is not a task id (a UUID)") from None


def plain(value: Any) -> Any:
    """A value as plain JSON data: attrs classes as objects, ids and times as strings."""
    if attrs.has(type(value)):
        return {
            f.name: plain(getattr(value, f.name))
            for f in attrs.fields(type(value))
            if not f.metadata.get("private")
        }
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (UUID, datetime)):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(plain(value), indent=2, sort_keys=True) + "\n")


def when(value: datetime | None) -> str:
    """A time for a table cell, to the second (blank: none)."""
    return "" if value is None else value.isoformat(timespec="seconds")


def show_rows(
    found: Sequence[T], as_json: bool, columns: Sequence[str], row: Callable[[T], Sequence[str]]
) -> None:
    """A listing: JSON with --json, else a table of one `row` per item."""
    if as_json:
        print_json(found)
        return
    table = Table(*columns)
    for item in found:
        table.add_row(*row(item))
    console().print(table)


def console() -> Console:
    """Rich output: the terminal's width, or wide enough not to fold columns when piped."""
    return Console(width=None if sys.stdout.isatty() else 240)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
