"""The one place values become JSON and back: a private, strictly configured cattrs converter.

Rules (docs/serialization.md says the same for users):
- attrs classes, dataclasses, primitives, lists, dicts with str keys, tuples, Optional,
  enums, UUID, datetime (timezone-aware, normalised to UTC), date, timedelta (seconds),
  Decimal (as a string) and bytes (base85) round-trip exactly.
- A naive datetime is refused when written: its meaning would depend on the time zone of
  whichever machine ran the code. (Stored text without an offset is read as UTC.)
- Unknown keys in stored data are an error, not silently dropped.
- A value with no declared type (``Any``) must already be plain JSON: dict keys must be
  strings (JSON would turn 1 into "1", and {1: .., "1": ..} into one key); sets and
  bytes are refused (they would come back as a list, as base85 text).
- Every value is round-tripped once when written, so a step returns the same value on the
  first run as on a replay, and a type that cannot round-trip fails when it is written.
"""

from __future__ import annotations

import collections.abc
import json
import re
import typing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import attrs
from cattrs.preconf.json import make_converter

from ._errors import SerializationError

__all__ = ["dumps", "loads", "roundtrip", "structure", "unstructure"]

MAX_JSON_BYTES = 10 * 1024 * 1024

_converter = make_converter(forbid_extra_keys=True)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _aware_iso(value: datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise SerializationError(
            f"naive datetime {value!r} has no time zone, so it would mean different instants "
            "on different machines: make it aware, e.g. datetime.now(UTC) or "
            "value.replace(tzinfo=UTC)"
        )
    return value.astimezone(UTC).isoformat()


_converter.register_unstructure_hook(UUID, str)
_converter.register_structure_hook(UUID, lambda v, _: UUID(v) if not isinstance(v, UUID) else v)
_converter.register_unstructure_hook(datetime, _aware_iso)
_converter.register_structure_hook(datetime, lambda v, _: _utc(datetime.fromisoformat(v)))


def _timedelta_seconds(value: timedelta) -> float:
    seconds = value.total_seconds()
    if timedelta(seconds=seconds) != value:  # beyond ~142 years float seconds lose microseconds
        raise SerializationError(
            f"{value!r} cannot be stored exactly as float seconds: round it to whole seconds"
        )
    return seconds


_converter.register_unstructure_hook(timedelta, _timedelta_seconds)
_converter.register_structure_hook(timedelta, lambda v, _: timedelta(seconds=float(v)))


def _structure_none(value: Any, _: Any) -> None:
    if value is not None:
        raise ValueError(f"expected null, got {value!r}")


# A task annotated ``params: None`` takes no params (cattrs has no NoneType hook).
_converter.register_structure_hook(type(None), _structure_none)
_converter.register_unstructure_hook(Decimal, str)
_converter.register_structure_hook(Decimal, lambda v, _: Decimal(str(v)))


def _refuse_set(value: Any) -> Any:
    # A set has no JSON form that reads back as a set unless its type is declared
    # (``set[int]`` fields use cattrs' own hook); under ``Any`` it would drift to a list.
    raise SerializationError(
        f"{type(value).__name__} {_short(value)} under an Any type would come back as a "
        "list: declare the type (e.g. set[int]) or pass a list"
    )


_converter.register_unstructure_hook(set, _refuse_set)
_converter.register_unstructure_hook(frozenset, _refuse_set)


def _strict(type_: type, accepts: tuple[type, ...]) -> None:
    """Stored JSON must already have the declared scalar type: no silent int("42") or
    int(1.5) on replay (invariant 9). bool is never taken for int or float."""

    def hook(value: Any, _: Any) -> Any:
        if isinstance(value, accepts) and (type_ is bool or not isinstance(value, bool)):
            return type_(value)
        raise TypeError(f"expected {type_.__name__}, got {type(value).__name__} {value!r}")

    _converter.register_structure_hook(type_, hook)


_strict(int, (int,))
_strict(float, (int, float))
_strict(str, (str,))
_strict(bool, (bool,))


_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _int_keyed(type_: Any) -> bool:
    origin = typing.get_origin(type_)
    args = typing.get_args(type_)
    return origin in _MAPPINGS and len(args) == 2 and args[0] is int


def _int_keyed_hook(type_: Any) -> Any:
    """JSON object keys are strings: a declared ``dict[int, V]`` reads "42" back as 42
    (only the canonical form, so the strict int rule still holds for values)."""
    value_type = typing.get_args(type_)[1]

    def hook(data: Any, _: Any) -> dict[int, Any]:
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, got {type(data).__name__} {data!r}")
        out = {}
        for key, value in data.items():
            if isinstance(key, str) and _INT_KEY.fullmatch(key):
                number = int(key)
            elif isinstance(key, int) and not isinstance(key, bool):
                number = key
            else:
                raise TypeError(f"expected an int key, got {key!r}")
            out[number] = _converter.structure(value, value_type)
        return out

    return hook


_INT_KEY = re.compile(r"-?(?:0|[1-9][0-9]*)")
_converter.register_structure_hook_factory(_int_keyed, _int_keyed_hook)


def unstructure(value: Any, type_: Any = Any) -> Any:
    """Turn `value` (declared as `type_`) into plain JSON data, or raise SerializationError."""
    try:
        if type_ is Any or type_ is None:
            _check_keys(value)  # before cattrs turns UUID, enum or datetime keys into str
            return _check_plain(_converter.unstructure(value))
        if attrs.has(type_) and not isinstance(value, type_):
            raise SerializationError(
                f"expected a {_type_name(type_)}, got {type(value).__name__} {_short(value)}"
            )
        return _converter.unstructure(value, unstructure_as=type_)
    except SerializationError:
        raise
    except Exception as ex:  # noqa: BLE001 - cattrs raises many kinds; all mean "cannot"
        raise SerializationError(
            f"cannot serialise {_short(value)} as {_type_name(type_)}: {ex}"
        ) from None


def structure(data: Any, type_: Any = Any) -> Any:
    """Build a `type_` from plain JSON data, or raise SerializationError."""
    if type_ is Any or type_ is None:
        return data
    try:
        return _converter.structure(data, type_)
    except Exception as ex:  # noqa: BLE001 - cattrs raises many kinds; all mean "does not fit"
        why = _explain(ex)  # may quote the stored value: keep messages bounded
        why = why if len(why) <= 600 else why[:597] + "..."
        raise SerializationError(
            f"value {_short(data)} does not match {_type_name(type_)}: {why}"
        ) from None


# Built once: json.dumps with options makes a new encoder on every call.
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def dumps(data: Any) -> str:
    """Plain JSON data to compact JSON text (NaN and Infinity are refused: not JSON)."""
    try:
        text = _ENCODER.encode(data)
    except (TypeError, ValueError) as ex:
        hint = " (NaN, Infinity and -Infinity have no JSON form)" if "float" in str(ex) else ""
        raise SerializationError(f"value is not JSON-serialisable: {ex}{hint}") from None
    if _SURROGATE.search(text):
        raise SerializationError(
            "value contains a lone surrogate character (not valid Unicode), which cannot "
            "be stored as UTF-8"
        )
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise SerializationError("value contains a NUL character, which Postgres cannot store")
    # The limit is on UTF-8 bytes (text is not ASCII-escaped): only encode when it matters.
    size = len(text) if len(text) * 4 <= MAX_JSON_BYTES else len(text.encode())
    if size > MAX_JSON_BYTES:
        raise SerializationError(
            f"serialised value is {size} bytes; the limit is {MAX_JSON_BYTES} bytes. "
            "Store large payloads elsewhere and pass a reference."
        )
    return text


# A JSON \u0000 escape: preceded by an even number of backslashes (the text "\\u0000",
# a backslash followed by "u0000", is fine).
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(text: str) -> Any:
    return json.loads(text)


def roundtrip(value: Any, type_: Any = Any) -> tuple[str, Any]:
    """Serialise `value` and read it back: (JSON text, the value as a replay would see it)."""
    data = unstructure(value, type_)
    text = dumps(data)
    return text, structure(loads(text), type_)


def _check_plain(data: Any) -> Any:
    dumps(data)
    return data


_BINARY = (bytes, bytearray, memoryview)
_WALKED = (dict, list, tuple, *_BINARY)


def _check_keys(data: Any) -> None:
    """Plain data only: every dict key a str (json.dumps would quietly stringify others),
    and no bytes (cattrs would quietly turn them into base85 text)."""
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if not isinstance(key, str):
                    raise SerializationError(
                        f"dict key {key!r} ({type(key).__name__}) under an Any type would "
                        "come back as a string (JSON object keys are strings): use str keys, "
                        "or declare the type (e.g. dict[int, str] in an attrs class)"
                    )
                if isinstance(value, _WALKED):
                    pending.append(value)
        elif isinstance(item, (list, tuple)):
            pending.extend(v for v in item if isinstance(v, _WALKED))
        elif isinstance(item, _BINARY):
            raise SerializationError(
                f"{type(item).__name__} {_short(item)} under an Any type would come back "
                "as base85 text, not bytes: declare the type (bytes, e.g. a field of an "
                "attrs class) or encode it yourself (e.g. base64 to str)"
            )


def _type_name(type_: Any) -> str:
    return getattr(type_, "__qualname__", None) or repr(type_)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _explain(ex: BaseException) -> str:
    subs = getattr(ex, "exceptions", None)
    if subs:
        return "; ".join(_explain(sub) for sub in subs)
    notes = getattr(ex, "__notes__", None)
    text = f"{type(ex).__name__}: {ex}"
    return f"{text} ({', '.join(notes)})" if notes else text
