"""The strict JSON converter: exact round trips, clear refusals, helpful messages."""

from __future__ import annotations

import enum
import json
import math
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from durable_trio import InvalidInput, SerializationError
from durable_trio._serde import MAX_JSON_BYTES, dumps, loads, roundtrip, structure, unstructure


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


@attrs.frozen
class Inner:
    name: str
    weight: float


@attrs.frozen
class Everything:
    i: int
    s: str
    f: float
    b: bool
    items: list[int]
    table: dict[str, float]
    maybe: int | None
    uid: UUID
    when: datetime
    span: timedelta
    amount: Decimal
    inner: list[Inner]
    pair: tuple[int, str]
    color: Color
    day: date
    blob: bytes
    note: str | None = None


@attrs.frozen
class Point:
    x: int
    y: int


@attrs.frozen
class Holder:
    payload: Any


@attrs.frozen
class Timed:
    at: datetime


# Strings Postgres can hold: no NUL (surrogates are already excluded by Hypothesis).
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)
datetimes = st.datetimes(
    min_value=datetime(2, 1, 1),
    max_value=datetime(9998, 12, 31),
    timezones=offsets,  # naive datetimes are refused (test_naive_datetime_is_refused)
)
# Float seconds are exact to the microsecond for spans up to ~142 years (2**52 us).
spans = st.timedeltas(min_value=timedelta(days=-52_000), max_value=timedelta(days=52_000))

everything = st.builds(
    Everything,
    i=st.integers(),
    s=texts,
    f=finite_floats,
    b=st.booleans(),
    items=st.lists(st.integers(), max_size=5),
    table=st.dictionaries(texts, finite_floats, max_size=5),
    maybe=st.one_of(st.none(), st.integers()),
    uid=st.uuids(),
    when=datetimes,
    span=spans,
    amount=st.decimals(allow_nan=False),
    inner=st.lists(st.builds(Inner, texts, finite_floats), max_size=3),
    pair=st.tuples(st.integers(), texts),
    color=st.sampled_from(Color),
    day=st.dates(),
    blob=st.binary(max_size=20),
    note=st.one_of(st.none(), texts),
)


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# -- exact round trips ----------------------------------------------------------------


@given(everything)
def test_attrs_values_round_trip_exactly(value: Everything) -> None:
    text, replayed = roundtrip(value, Everything)
    expected = attrs.evolve(value, when=_as_utc(value.when))
    assert replayed == expected
    assert type(replayed) is Everything
    # Same types, not just equal values (no int/float/str drift).
    for field in attrs.fields(Everything):
        assert type(getattr(replayed, field.name)) is type(getattr(expected, field.name))
    assert str(replayed.amount) == str(value.amount)  # Decimal keeps its exact digits
    assert replayed.when.utcoffset() == timedelta(0)
    # What a replay reads from the database is what the first run got.
    assert structure(loads(text), Everything) == replayed
    # And writing the replayed value again gives the same JSON: a fixed point.
    assert roundtrip(replayed, Everything)[0] == text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite_floats | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_plain_json_round_trips_under_any(value: Any) -> None:
    text, replayed = roundtrip(value)
    assert replayed == value
    assert loads(text) == value
    assert unstructure(value) == value
    assert structure(value) is value  # Any: taken as is


@given(json_values)
def test_any_field_holds_plain_json(value: Any) -> None:
    assert roundtrip(Holder(value), Holder)[1] == Holder(value)


@pytest.mark.parametrize("type_", [Timed, Any])
def test_naive_datetime_is_refused(type_: Any) -> None:
    naive = datetime(2024, 5, 6, 7, 8, 9, 123456)
    with pytest.raises(SerializationError, match=r"naive datetime .*\.replace\(tzinfo=UTC\)"):
        roundtrip(Timed(naive) if type_ is Timed else {"at": naive}, type_)
    aware = naive.replace(tzinfo=UTC)
    text, replayed = roundtrip(Timed(aware), Timed)
    assert json.loads(text) == {"at": "2024-05-06T07:08:09.123456+00:00"}
    assert replayed.at == aware


@pytest.mark.parametrize(
    "value",
    [
        {1: "a"},
        {"n": [{"ok": 1}, {None: 2}]},
        [({2.5: 1},)],
        {"x": {True: 1}},
        {UUID(int=1): "u"},
        {"c": {Color.RED: 1}},
    ],
)
def test_non_string_dict_keys_are_refused_under_any(value: Any) -> None:
    with pytest.raises(SerializationError, match=r"dict key .* use str keys"):
        roundtrip(value)


def test_aware_datetime_is_normalised_to_utc() -> None:
    local = datetime(2024, 5, 6, 9, 0, tzinfo=timezone(timedelta(hours=2)))
    text, replayed = roundtrip(local, datetime)
    assert text == '"2024-05-06T07:00:00+00:00"'
    assert replayed == local
    assert replayed.tzinfo is UTC
    assert replayed.hour == 7


def test_stored_offsets_are_read_as_utc() -> None:
    value = structure("2024-01-01T12:00:00-05:00", datetime)
    assert value == datetime(2024, 1, 1, 17, tzinfo=UTC)
    assert value.tzinfo is UTC
    assert structure("2024-01-01T12:00:00", datetime).tzinfo is UTC


@pytest.mark.parametrize(
    ("value", "type_", "json_text"),
    [
        (
            UUID("01890a5d-ac96-774b-bcce-b302099a8057"),
            UUID,
            '"01890a5d-ac96-774b-bcce-b302099a8057"',
        ),
        (timedelta(minutes=1, microseconds=5), timedelta, "60.000005"),
        (timedelta(days=-1), timedelta, "-86400.0"),
        (Decimal("1.10"), Decimal, '"1.10"'),
        (Decimal("-0.000"), Decimal, '"-0.000"'),
        (Decimal("1E+30"), Decimal, '"1E+30"'),
        (Point(1, 2), Point, '{"x":1,"y":2}'),
        ([Point(1, 2)], list[Point], '[{"x":1,"y":2}]'),
        ((1, "a"), tuple[int, str], '[1,"a"]'),
        (None, int | None, "null"),
        ({"k": 1.5}, dict[str, float], '{"k":1.5}'),
        (Color.GREEN, Color, '"green"'),
        ("é ✓", str, '"é ✓"'),  # not ASCII-escaped
        (10**40, int, "10000000000000000000000000000000000000000"),
    ],
)
def test_known_encodings(value: Any, type_: Any, json_text: str) -> None:
    text, replayed = roundtrip(value, type_)
    assert text == json_text
    assert replayed == value
    assert type(replayed) is type(value)


def test_sets_round_trip_when_declared() -> None:
    text, replayed = roundtrip({3, 1, 2}, set[int])
    assert sorted(json.loads(text)) == [1, 2, 3]
    assert replayed == {1, 2, 3}
    assert type(replayed) is set


def test_compact_output() -> None:
    assert dumps({"a": [1, 2], "b": None}) == '{"a":[1,2],"b":null}'


# -- structure: stored data that does not fit the type --------------------------------


def test_extra_keys_are_rejected() -> None:
    with pytest.raises(SerializationError) as info:
        structure({"x": 1, "y": 2, "z": 3}, Point)
    message = str(info.value)
    assert "does not match Point" in message
    assert "'z'" in message  # names the unexpected key
    assert "{'x': 1, 'y': 2, 'z': 3}" in message  # shows the stored value


def test_extra_keys_in_nested_values_are_rejected() -> None:
    with pytest.raises(SerializationError, match="does not match"):
        structure([{"name": "a", "weight": 1.0, "colour": "red"}], list[Inner])


def test_missing_keys_are_rejected() -> None:
    with pytest.raises(SerializationError, match="does not match Point") as info:
        structure({"x": 1}, Point)
    assert "y" in str(info.value)


@pytest.mark.parametrize(
    ("data", "type_"),
    [
        ({"x": "one", "y": 2}, Point),
        ({"x": 1.5, "y": 2}, Point),
        ({"x": True, "y": 2}, Point),
        ("42", int),
        (1.5, int),
        (True, int),
        (True, float),
        ("1.5", float),
        (3, str),
        (None, str),
        (1, bool),
        ("not a uuid", UUID),
        ("yesterday", datetime),
        ("ten", timedelta),
        ("abc", Decimal),
        ("purple", Color),
        ([1, "x"], list[int]),
        ({"k": "v"}, dict[str, int]),
        ([1], tuple[int, str]),
        ("x", Point),
        ([1, 2], Point),
    ],
)
def test_wrong_types_raise_serialization_error(data: Any, type_: Any) -> None:
    with pytest.raises(SerializationError) as info:
        structure(data, type_)
    message = str(info.value)
    assert message.startswith(f"value {data!r} does not match")
    # SerializationError is an InvalidInput (and so a ValueError).
    assert isinstance(info.value, InvalidInput)
    assert isinstance(info.value, ValueError)


def test_scalars_are_strict_but_ints_are_floats() -> None:
    assert structure(3, float) == 3.0
    assert type(structure(3, float)) is float
    assert structure(False, bool) is False
    assert structure("s", str) == "s"


def test_nested_wrong_type_message_is_specific() -> None:
    with pytest.raises(SerializationError) as info:
        structure({"name": "a", "weight": "heavy"}, Inner)
    message = str(info.value)
    assert "does not match Inner" in message
    assert "weight" in message
    assert "float" in message


# -- values that cannot be written ----------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(bad: float) -> None:
    for value, type_ in [(bad, Any), (bad, float), (Inner("a", bad), Inner), ([1.0, bad], Any)]:
        with pytest.raises(SerializationError) as info:
            roundtrip(value, type_)
        message = str(info.value)
        assert "not JSON-serialisable" in message
        assert "NaN, Infinity and -Infinity have no JSON form" in message
    with pytest.raises(SerializationError):
        dumps({"x": bad})


@pytest.mark.parametrize(
    ("value", "type_"),
    [
        ("a\x00b", Any),
        ("\x00", str),
        ({"k\x00": 1}, Any),
        (Inner("nul\x00", 1.0), Inner),
        (["ok", ["deep\x00"]], Any),
        ("\\\x00", Any),
    ],
)
def test_nul_is_refused(value: Any, type_: Any) -> None:
    with pytest.raises(SerializationError, match="NUL character, which Postgres cannot store"):
        roundtrip(value, type_)


@pytest.mark.parametrize("value", ["\\u0000", "a\\u0000b", "\\\\u0000", "u0000", "\\"])
def test_text_that_merely_looks_like_a_nul_escape_is_fine(value: str) -> None:
    text, replayed = roundtrip(value)
    assert replayed == value
    assert loads(text) == value


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(SerializationError, match="surrogate"):
        roundtrip("\ud800", str)
    with pytest.raises(SerializationError, match="surrogate"):
        dumps({"k": "x\udfff"})


def test_size_limit() -> None:
    at_limit = "x" * (MAX_JSON_BYTES - 2)  # plus two quotes: exactly the limit
    assert len(dumps(at_limit)) == MAX_JSON_BYTES
    with pytest.raises(SerializationError) as info:
        dumps("x" * (MAX_JSON_BYTES - 1))
    message = str(info.value)
    assert f"serialised value is {MAX_JSON_BYTES + 1} bytes" in message
    assert f"the limit is {MAX_JSON_BYTES} bytes" in message
    assert "Store large payloads elsewhere" in message
    with pytest.raises(SerializationError, match="limit"):
        roundtrip(["x" * 1024] * (MAX_JSON_BYTES // 1024), list[str])


def test_size_limit_counts_utf8_bytes() -> None:
    # 2-byte characters: fewer characters than the limit, more bytes.
    value = "é" * (MAX_JSON_BYTES // 2)
    with pytest.raises(SerializationError) as info:
        dumps(value)
    assert f"serialised value is {MAX_JSON_BYTES + 2} bytes" in str(info.value)


@pytest.mark.parametrize(
    "value",
    [{1, 2}, frozenset({"a"}), [{1}], {"k": {2}}],
)
def test_sets_are_refused_under_any(value: Any) -> None:
    with pytest.raises(SerializationError) as info:
        roundtrip(value)
    assert "declare the type" in str(info.value)
    with pytest.raises(SerializationError):
        roundtrip(Holder(value), Holder)


@pytest.mark.parametrize("value", [object(), [object()], {"k": object()}, 1 + 2j])
def test_arbitrary_objects_are_refused_under_any(value: Any) -> None:
    with pytest.raises(SerializationError, match="not JSON-serialisable") as info:
        roundtrip(value)
    assert "is not JSON serializable" in str(info.value)  # json's own words: which type


def test_objects_that_do_not_match_the_declared_type_are_refused() -> None:
    with pytest.raises(SerializationError) as info:
        roundtrip(Inner("a", 1.0), Point)
    message = str(info.value)
    assert "Point" in message
    assert "Inner" in message
    with pytest.raises(SerializationError, match="Point"):
        roundtrip({"x": 1, "y": 2}, Point)


def test_unserialisable_field_names_the_value_and_type() -> None:
    @attrs.frozen
    class Wrapper:
        thing: object

    with pytest.raises(SerializationError) as info:
        roundtrip(Wrapper(object()), Wrapper)
    assert "object" in str(info.value)


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(SerializationError) as info:
        structure({"x": "v" * 10_000}, Point)
    message = str(info.value)
    assert "..." in message
    assert len(message) < 1_000


def test_serialization_error_is_invalid_input() -> None:
    assert issubclass(SerializationError, InvalidInput)
    assert issubclass(SerializationError, ValueError)


@pytest.mark.parametrize(
    "span",
    [
        timedelta(days=120_000, microseconds=1),
        -timedelta(days=200_000, microseconds=3),
        timedelta.max,
    ],
)
def test_timedeltas_that_float_seconds_cannot_hold_are_refused(span: timedelta) -> None:
    # Better refused when written than silently read back a microsecond off on replay.
    with pytest.raises(SerializationError, match="timedelta"):
        roundtrip(span, timedelta)


def test_long_whole_second_timedeltas_round_trip() -> None:
    span = timedelta(days=999_999_999)
    assert roundtrip(span, timedelta)[1] == span
    assert roundtrip(-span, timedelta)[1] == -span


@attrs.frozen
class IntKeyed:
    m: dict[int, str]


def test_int_keyed_dicts_round_trip_when_declared() -> None:
    # JSON keys are strings; the declared type reads the canonical form back as int.
    text, replayed = roundtrip(IntKeyed({1: "a", -3: "b", 0: "c"}), IntKeyed)
    assert json.loads(text) == {"m": {"1": "a", "-3": "b", "0": "c"}}
    assert replayed == IntKeyed({1: "a", -3: "b", 0: "c"})
    for bad in ("01", "1.0", "x", "", "+1"):
        with pytest.raises(SerializationError, match="expected an int key"):
            structure({"m": {bad: "a"}}, IntKeyed)
