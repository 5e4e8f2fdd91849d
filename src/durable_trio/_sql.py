"""Sans-IO SQL: what to send and how to read the answer, written once for every client.

An operation is a generator: it yields a `Statement`, receives that statement's rows
(dicts; an empty list when the statement returns none) and finally returns its value. A
database error is thrown back into it at the yield, so it may handle one (a savepoint
rolled back) or let it through. Executors drive operations over a connection:
`run_async` for psycopg's async connections (the trio-native one and asyncio's alike)
and `run_blocking` for a blocking one. They decide nothing; the operations decide
nothing about I/O. (psycopg's own generators and waiting functions have this shape.)
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeAlias, TypeVar

import attrs
import psycopg
from psycopg import pq, sql
from psycopg.rows import dict_row

from ._errors import ConfigurationError
from ._schema import function_digests, functions, latest_version, migrations, render

__all__ = [
    "Op",
    "Statement",
    "check_schema",
    "guarded",
    "is_current",
    "migrate",
    "run_async",
    "run_blocking",
]

T = TypeVar("T")
Row: TypeAlias = dict[str, Any]
Params: TypeAlias = Mapping[str, Any] | Sequence[Any] | None


@attrs.frozen
class Statement:
    """A statement and its parameters. ``prepare=False`` plans it with its own values each
    time (statements whose optional filters should fold away), None leaves it to psycopg."""

    query: bytes | str | sql.SQL | sql.Composed
    params: Params = None
    prepare: bool | None = None


Op: TypeAlias = Generator[Statement, list[Row], T]

MIGRATE_LOCK = 0x6475726162_6C65  # "durable" in hex, for pg_advisory_xact_lock
MIGRATE_HINT = (
    "connect once with migrate=True (the default) as a role that may change the schema, "
    "or run `durable-trio migrate`"
)
# A statement on a schema that was never migrated, or is older than this library.
SCHEMA_ERRORS = (
    psycopg.errors.InvalidSchemaName,
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
)


# -- executors ------------------------------------------------------------------------


class _Drive(Generic[T]):
    """One operation being driven: ask it for its next statement, feed it the answer."""

    def __init__(self, op: Op[T]) -> None:
        self._op = op
        self._resume: Callable[[], Statement] = op.__next__
        self.result: T

    def statement(self) -> Statement | None:
        """The next statement to run, or None once the operation has returned."""
        try:
            return self._resume()
        except StopIteration as done:
            self.result = done.value
            return None

    def answer(self, rows: list[Row]) -> None:
        self._resume = lambda: self._op.send(rows)

    def fail(self, error: psycopg.Error) -> None:
        self._resume = lambda: self._op.throw(error)


_ROWS_STATUS = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.SINGLE_TUPLE, pq.ExecStatus.TUPLES_CHUNK)


def _returns_rows(cur: psycopg.AsyncCursor[Any] | psycopg.Cursor[Any]) -> bool:
    """``cur.description is not None``, the same test, without building a `Column` per
    field (each one looks its type up): a dozen per claim, every round trip."""
    res = cur.pgresult
    return res is not None and (res.nfields > 0 or res.status in _ROWS_STATUS)


async def run_async(conn: psycopg.AsyncConnection[Any], op: Op[T]) -> T:
    """Drive `op` over an async psycopg connection (trio-native or asyncio)."""
    drive = _Drive(op)
    while (statement := drive.statement()) is not None:
        try:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(statement.query, statement.params, prepare=statement.prepare)
                drive.answer(await cur.fetchall() if _returns_rows(cur) else [])
        except psycopg.Error as ex:
            drive.fail(ex)
    return drive.result


def run_blocking(conn: psycopg.Connection[Any], op: Op[T]) -> T:
    """Drive `op` over a blocking psycopg connection."""
    drive = _Drive(op)
    while (statement := drive.statement()) is not None:
        try:
            with conn.cursor(row_factory=dict_row) as cur:
                cur.execute(statement.query, statement.params, prepare=statement.prepare)
                drive.answer(cur.fetchall() if _returns_rows(cur) else [])
        except psycopg.Error as ex:
            drive.fail(ex)
    return drive.result


def array_literal(items: Iterable[str]) -> str:
    """A PostgreSQL array literal of text elements, for a ``%s::type[]`` parameter:
    psycopg's list adapter inspects and quotes element by element in Python, which was a
    fifth of spawn_many's client time at 20,000 tasks (and, for a claim's task names, 3%
    of a concurrency-1 worker's CPU)."""
    quoted = [item.replace("\\", "\\\\").replace('"', '\\"') for item in items]
    return '{"' + '","'.join(quoted) + '"}' if quoted else "{}"


def nullable_array_literal(items: Iterable[str | None]) -> str:
    """`array_literal` whose None items are NULL elements."""
    quoted = [
        "NULL" if item is None else '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for item in items
    ]
    return "{" + ",".join(quoted) + "}"


# -- the schema: migrations and function definitions ----------------------------------


def migrate(schema: str) -> Op[list[int]]:
    """Apply what is missing (run it in one transaction): function definitions whose file
    changed, then pending migrations. Returns the migration versions applied. A role that
    may not change the schema gets a ConfigurationError saying what to do.

    A schema that is already current is only read: the application role of
    docs/security.md may connect with migrate=True once the owner has migrated."""
    try:
        if (yield from _current_quietly(schema)):
            return []
        return (yield from _migrate(schema))
    except psycopg.errors.InsufficientPrivilege as ex:
        raise ConfigurationError(
            f"this role may not change schema {schema!r} ({ex.diag.message_primary}): "
            "run migrate() (`durable-trio migrate`) once as the schema owner, then connect "
            "with migrate=False (`durable-trio worker --no-migrate`); docs/security.md "
            "lists the grants a worker needs"
        ) from None


def _current_quietly(schema: str) -> Op[bool]:
    """Whether `_migrate` would change nothing: every migration applied and exactly this
    library's functions installed. Read without a statement that fails when something is
    missing: it runs inside the migration's transaction, which a failed one would abort."""
    ident = sql.Identifier(schema)
    [found] = yield Statement(
        "SELECT to_regclass(%s) IS NOT NULL AS migrations,"
        " to_regclass(%s) IS NOT NULL AS functions",
        (f"{ident.as_string(None)}.migrations", f"{ident.as_string(None)}.functions"),
    )
    if not (found["migrations"] and found["functions"]):
        return False
    [row] = yield Statement(sql.SQL("SELECT max(version) AS v FROM {}.migrations").format(ident))
    if row["v"] is None or row["v"] < latest_version():
        return False
    rows = yield Statement(sql.SQL("SELECT name, digest FROM {}.functions").format(ident))
    return {r["name"]: r["digest"] for r in rows} == function_digests()


def _migrate(schema: str) -> Op[list[int]]:
    ident = sql.Identifier(schema)
    yield Statement("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
    yield Statement(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
    yield Statement(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        ).format(ident)
    )
    yield Statement(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.functions (name text PRIMARY KEY,"
            " digest text NOT NULL, installed_at timestamptz NOT NULL DEFAULT now())"
        ).format(ident)
    )
    # Functions first: a migration's trigger may name one. Function bodies resolve tables
    # when called, so a function may use tables a later migration creates.
    yield from _install_functions(schema)
    done = {
        r["version"]
        for r in (yield Statement(sql.SQL("SELECT version FROM {}.migrations").format(ident)))
    }
    applied: list[int] = []
    for version, name, text in migrations():
        if version in done:
            continue
        yield Statement(render(text, schema).encode())
        yield Statement(
            sql.SQL("INSERT INTO {}.migrations (version, name) VALUES (%s, %s)").format(ident),
            (version, name),
        )
        applied.append(version)
    return applied


def _install_functions(schema: str) -> Op[None]:
    """(Re-)create each function whose file changed; drop those whose file is gone."""
    ident = sql.Identifier(schema)
    rows = yield Statement(sql.SQL("SELECT name, digest FROM {}.functions").format(ident))
    stored = {row["name"]: row["digest"] for row in rows}
    for name, text, digest in functions():
        if stored.get(name) == digest:
            continue
        yield from _create_function(schema, name, render(text, schema))
        yield Statement(
            sql.SQL(
                "INSERT INTO {}.functions (name, digest) VALUES (%s, %s) ON CONFLICT (name)"
                " DO UPDATE SET digest = EXCLUDED.digest, installed_at = now()"
            ).format(ident),
            (name, digest),
        )
    for name in sorted(stored.keys() - function_digests().keys()):
        yield from _drop_function(schema, name)
        yield Statement(sql.SQL("DELETE FROM {}.functions WHERE name = %s").format(ident), (name,))


def _create_function(schema: str, name: str, text: str) -> Op[None]:
    """CREATE OR REPLACE keeps the function (and the triggers using it) in place; a changed
    return type or parameter names cannot be replaced, so the old one goes first."""
    before = yield from _function_signatures(schema, name)
    yield Statement("SAVEPOINT durable_function")
    try:
        yield Statement(text.encode())
    except psycopg.errors.InvalidFunctionDefinition:
        yield Statement("ROLLBACK TO SAVEPOINT durable_function")
        yield from _drop_function(schema, name)
        yield Statement(text.encode())
        return
    yield Statement("RELEASE SAVEPOINT durable_function")
    after = yield from _function_signatures(schema, name)
    if after - before:  # a new parameter list: the old overloads go
        yield from _drop_function(schema, name, only=before)


def _function_signatures(schema: str, name: str) -> Op[set[str]]:
    rows = yield Statement(
        "SELECT p.oid::regprocedure::text AS sig FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s AND p.proname = %s",
        (schema, name),
    )
    return {row["sig"] for row in rows}


def _drop_function(schema: str, name: str, *, only: set[str] | None = None) -> Op[None]:
    signatures = only if only is not None else (yield from _function_signatures(schema, name))
    for signature in sorted(signatures):
        yield Statement(sql.SQL("DROP FUNCTION {}").format(sql.SQL(signature)))


def schema_version(schema: str) -> Op[int | None]:
    """The schema's migration version; None if it was never migrated."""
    try:
        rows = yield Statement(
            sql.SQL("SELECT max(version) AS v FROM {}.migrations").format(sql.Identifier(schema))
        )
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return None
    version: int | None = rows[0]["v"]
    return version


def stale_functions(schema: str) -> Op[list[str]]:
    """Functions whose installed definition is not this library's (or is missing)."""
    try:
        rows = yield Statement(
            sql.SQL("SELECT name, digest FROM {}.functions").format(sql.Identifier(schema))
        )
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        return sorted(function_digests())
    stored = {row["name"]: row["digest"] for row in rows}
    return sorted(n for n, d in function_digests().items() if stored.get(n) != d)


def is_current(schema: str) -> Op[bool]:
    """Whether the schema has every migration and function definition of this library
    (run on an autocommit connection: a failed look-up must not abort a transaction)."""
    version = yield from schema_version(schema)
    if version is None or version < latest_version():
        return False
    return not (yield from stale_functions(schema))


def check_schema(schema: str) -> Op[None]:
    """ConfigurationError unless the schema has every migration and function definition
    this library has (autocommit connection)."""
    version = yield from schema_version(schema)
    if version is None or version < latest_version():
        found = "does not exist" if version is None else f"is at version {version}"
        raise ConfigurationError(
            f"durable_trio schema {schema!r} {found}; this library needs version "
            f"{latest_version()}: {MIGRATE_HINT}"
        )
    stale = yield from stale_functions(schema)
    if stale:
        raise ConfigurationError(
            f"durable_trio schema {schema!r} has other definitions of {', '.join(stale)} "
            f"than this library: {MIGRATE_HINT}"
        )


def guarded(schema: str, op: Op[T]) -> Op[T]:
    """`op`, where a missing table or function of a schema that is missing or older than
    this library becomes a ConfigurationError saying to migrate. Every statement the
    clients and the store send goes through here: one mapping for all of them."""
    try:
        return (yield from op)
    except SCHEMA_ERRORS as ex:
        failure = ex
    try:
        current = yield from is_current(schema)
    except psycopg.Error:  # inside the caller's failed transaction: cannot tell
        current = False
    if current:
        raise failure  # the schema is complete: some other mistake, reported as it is
    raise ConfigurationError(
        f"durable_trio schema {schema!r} is missing or older than this library "
        f"({failure.diag.message_primary}): {MIGRATE_HINT}"
    ) from None
