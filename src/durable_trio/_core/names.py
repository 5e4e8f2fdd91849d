"""Names: queues, tasks, events, steps, and the deterministic naming of checkpoints."""

from __future__ import annotations

import re

from .._errors import InvalidInput

MAX_NAME = 200
_QUEUE = re.compile(r"[a-z_][a-z0-9_]{0,47}")
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,47}")
RESERVED_PREFIX = "$"


def validate_queue(name: object) -> str:
    if not isinstance(name, str) or not _QUEUE.fullmatch(name):
        raise InvalidInput(
            f"queue name {name!r} is invalid: use 1-48 characters of lowercase letters, "
            "digits and underscores, not starting with a digit"
        )
    return name


def validate_schema(name: object) -> str:
    if not isinstance(name, str) or not _SCHEMA.fullmatch(name):
        raise InvalidInput(
            f"schema name {name!r} is invalid: use 1-48 characters of lowercase letters, "
            "digits and underscores, not starting with a digit"
        )
    if name.startswith("pg_"):
        raise InvalidInput(f"schema name {name!r} is invalid: Postgres reserves the prefix 'pg_'")
    return name


def validate_name(name: object, *, what: str, allow_reserved: bool = False) -> str:
    """Task, event and step names: any printable text of 1..200 characters.

    Names are stored as values (never spliced into SQL), so quotes and semicolons are
    fine; control characters and NUL are not (Postgres text cannot hold NUL).
    """
    if not isinstance(name, str):
        raise InvalidInput(f"{what} must be a string, got {type(name).__name__}")
    if not name or len(name) > MAX_NAME:
        raise InvalidInput(f"{what} must be 1 to {MAX_NAME} characters long, got {len(name)}")
    if not name.isprintable():
        raise InvalidInput(f"{what} {name!r} contains control characters")
    if name.startswith(RESERVED_PREFIX) and not allow_reserved:
        raise InvalidInput(f"{what} {name!r} starts with '$', which is reserved for durable_trio")
    return name


class CheckpointNamer:
    """Gives each use of a step name within one run a stable checkpoint name.

    The first ``fetch`` is ``fetch``, the second ``fetch#2``, and so on: a replay that
    makes the same calls in the same order gets the same names.
    """

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._issued: set[str] = set()

    def next(self, name: str) -> str:
        count = self._seen.get(name, 0) + 1
        candidate = name if count == 1 else f"{name}#{count}"
        while candidate in self._issued:  # a user name like "fetch#2" took it already
            count += 1
            candidate = f"{name}#{count}"
        self._seen[name] = count
        self._issued.add(candidate)
        return candidate


def internal(kind: str, name: str) -> str:
    """Checkpoint name for a library-made checkpoint (child spawn, helpers, ...)."""
    return f"{RESERVED_PREFIX}{kind}:{name}"


def child_event(task_id: object) -> str:
    """The internal event a task emits when it reaches a terminal state (join waits on it)."""
    return f"{RESERVED_PREFIX}task:{task_id}"
