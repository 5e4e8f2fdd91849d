"""The SQL files shipped with the library, read and checked; nothing here talks to a database.

- ``sql/migrations/NNNN_name.sql``: tables, indexes, triggers and data, applied once each,
  in order, and recorded in the schema's ``migrations`` table.
- ``sql/functions/<name>.sql``: the current definition of one SQL function each. `migrate`
  re-creates a function whenever its file's text changes (a digest per function is kept
  in the schema's ``functions`` table), so a function's body is read in one place.
- ``sql/queries.sql``: the named statements the store executes, and parts that several
  of them share ("-- part: name", put in where a statement says "@part(name)").

"@schema" in a text becomes the schema as a quoted identifier, "@schema_literal" the same
name as a string literal.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import resources
from pathlib import Path

from psycopg import sql

__all__ = ["functions", "migrations", "query_texts", "render", "sql_dir"]

_SECTION = re.compile(r"^-- (name|part): (\w+)\s*$", re.MULTILINE)
_PART = re.compile(r"@part\((\w+)\)")
_MIGRATION = re.compile(r"^(\d{4})_(\w+)\.sql$")
_FUNCTION = re.compile(r"^CREATE OR REPLACE FUNCTION @schema\.(\w+)\(", re.MULTILINE)


def sql_dir() -> Path:
    """sql/ inside an installed wheel, or at the top of a source checkout."""
    packaged = Path(str(resources.files("durable_trio"))) / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


@cache
def migrations() -> tuple[tuple[int, str, str], ...]:
    """(version, name, text) for every file in sql/migrations, in order."""
    found = []
    for path in sorted((sql_dir() / "migrations").iterdir()):
        match = _MIGRATION.match(path.name)
        if match:
            found.append((int(match[1]), match[2], path.read_text()))
    return tuple(found)


@cache
def functions() -> tuple[tuple[str, str, str], ...]:
    """(name, text, digest) for every file in sql/functions, by name.

    Each file defines exactly the function it is named after, with CREATE OR REPLACE.
    """
    found = []
    for path in sorted((sql_dir() / "functions").glob("*.sql")):
        text = path.read_text()
        defined = _FUNCTION.findall(text)
        if defined != [path.stem]:
            raise RuntimeError(
                f"{path} must define exactly one function, {path.stem}, with "
                f"CREATE OR REPLACE FUNCTION @schema.{path.stem}(...); it defines {defined}"
            )
        found.append((path.stem, text, hashlib.sha256(text.encode()).hexdigest()))
    return tuple(found)


@cache
def query_texts() -> dict[str, str]:
    """The statements of sql/queries.sql by name, each "@part(name)" in them replaced by
    that part's text."""
    sections = _SECTION.split((sql_dir() / "queries.sql").read_text())
    named: dict[str, str] = {}
    parts: dict[str, str] = {}
    for i in range(1, len(sections), 3):
        kind, name, text = sections[i : i + 3]
        (named if kind == "name" else parts)[name] = text.strip()
    return {name: _PART.sub(lambda m: parts[m[1]], text) for name, text in named.items()}


def render(text: str, schema: str) -> str:
    """Put the schema into a SQL text: quoted as an identifier, or as a string literal."""
    ident = sql.Identifier(schema).as_string(None)
    literal = sql.Literal(schema).as_string(None)
    return text.replace("@schema_literal", literal).replace("@schema", ident)


def latest_version() -> int:
    return migrations()[-1][0]


def function_digests() -> dict[str, str]:
    return {name: digest for name, _, digest in functions()}
