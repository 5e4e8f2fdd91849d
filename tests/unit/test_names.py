"""Queue, schema and task/event/step names; deterministic checkpoint naming."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import durable_trio as dt
from durable_trio import InvalidInput
from durable_trio._core.names import (
    MAX_NAME,
    CheckpointNamer,
    child_event,
    internal,
    validate_name,
    validate_queue,
    validate_schema,
)

IDENTIFIER_VALIDATORS = [validate_queue, validate_schema]

GOOD_IDENTIFIERS = ["a", "_", "default", "q1", "my_queue_2", "_private", "a" * 48, "x" * 47 + "9"]
BAD_IDENTIFIERS: list[object] = [
    "",
    "a" * 49,
    "Default",
    "QUEUE",
    "1queue",
    "9",
    "my-queue",
    "my queue",
    "queue;drop",
    "q'uote",
    'q"uote',
    "a.b",
    "$queue",
    "queue\n",
    "\nqueue",
    "qu\x00eue",
    "é",
    "ｑ",  # fullwidth letter: not ASCII
    None,
    42,
    b"queue",
    ["queue"],
]


@pytest.mark.parametrize("validate", IDENTIFIER_VALIDATORS)
@pytest.mark.parametrize("name", GOOD_IDENTIFIERS)
def test_identifiers_accepted(validate: Callable[[object], str], name: str) -> None:
    assert validate(name) == name


@pytest.mark.parametrize("validate", IDENTIFIER_VALIDATORS)
@pytest.mark.parametrize("name", BAD_IDENTIFIERS)
def test_identifiers_rejected(validate: Callable[[object], str], name: object) -> None:
    with pytest.raises(InvalidInput) as info:
        validate(name)
    message = str(info.value)
    assert repr(name) in message
    assert "1-48 characters of lowercase letters" in message


def test_queue_message_names_the_kind() -> None:
    with pytest.raises(InvalidInput, match=r"^queue name 'Bad' is invalid"):
        validate_queue("Bad")
    with pytest.raises(InvalidInput, match=r"^schema name 'Bad' is invalid"):
        validate_schema("Bad")


@pytest.mark.parametrize("name", ["pg_catalog", "pg_temp", "pg_mine"])
def test_schema_rejects_the_names_postgres_reserves(name: str) -> None:
    # CREATE SCHEMA pg_x fails in Postgres ("the prefix pg_ is reserved"): refuse it
    # before any SQL runs. Queues are plain values, so the prefix is fine there.
    with pytest.raises(InvalidInput, match="pg_"):
        validate_schema(name)
    assert validate_queue(name) == name


@given(st.from_regex(r"[a-z_][a-z0-9_]{0,47}", fullmatch=True))
def test_every_identifier_matching_the_documented_pattern_is_a_valid_queue(name: str) -> None:
    assert validate_queue(name) == name


# -- task / event / step names --------------------------------------------------------

GOOD_NAMES = [
    "a",
    "Send Email",
    "fetch-user",
    "it's; DROP TABLE tasks; --",
    'say "hi"',
    "Robert'); --",
    "ünïcödé ✓ 名前",
    "with $ inside",
    "ends with $",
    "x" * MAX_NAME,
    "a#2",
    "path/to:thing",
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_names_accepted(name: str) -> None:
    assert validate_name(name, what="step name") == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "step name must be 1 to 200 characters long, got 0"),
        ("x" * (MAX_NAME + 1), "step name must be 1 to 200 characters long, got 201"),
        ("nul\x00byte", "contains control characters"),
        ("new\nline", "contains control characters"),
        ("tab\there", "contains control characters"),
        ("\x1b[31mred", "contains control characters"),
        ("del\x7f", "contains control characters"),
        ("$reserved", "starts with '\\$', which is reserved for durable_trio"),
        ("$", "reserved"),
        (None, "step name must be a string, got NoneType"),
        (12, "step name must be a string, got int"),
        (b"bytes", "step name must be a string, got bytes"),
    ],
)
def test_names_rejected(name: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_name(name, what="step name")


def test_name_messages_use_what() -> None:
    with pytest.raises(InvalidInput, match=r"^event name"):
        validate_name("", what="event name")
    with pytest.raises(InvalidInput, match=r"^task name '\$x'"):
        validate_name("$x", what="task name")


def test_reserved_prefix_allowed_for_internal_names() -> None:
    assert validate_name("$sleep:nap", what="step name", allow_reserved=True) == "$sleep:nap"
    # allow_reserved lifts only the prefix rule, not the others.
    with pytest.raises(InvalidInput, match="control"):
        validate_name("$a\x00", what="step name", allow_reserved=True)
    with pytest.raises(InvalidInput, match="1 to 200"):
        validate_name("$" * 201, what="step name", allow_reserved=True)


@given(st.text(min_size=1, max_size=MAX_NAME))
def test_name_validation_property(name: str) -> None:
    should_pass = name.isprintable() and not name.startswith("$")
    try:
        result = validate_name(name, what="x")
    except InvalidInput:
        assert not should_pass
    else:
        assert should_pass
        assert result == name
        assert "\x00" not in result


# -- checkpoint naming ----------------------------------------------------------------


def test_namer_suffixes_repeats() -> None:
    namer = CheckpointNamer()
    assert [namer.next("fetch") for _ in range(4)] == ["fetch", "fetch#2", "fetch#3", "fetch#4"]


def test_namer_counts_each_name_separately() -> None:
    namer = CheckpointNamer()
    got = [namer.next(n) for n in ["a", "b", "a", "c", "b", "a"]]
    assert got == ["a", "b", "a#2", "c", "b#2", "a#3"]


def test_namers_are_independent() -> None:
    first, second = CheckpointNamer(), CheckpointNamer()
    assert first.next("x") == "x"
    assert first.next("x") == "x#2"
    assert second.next("x") == "x"


def test_namer_never_gives_the_same_name_twice() -> None:
    # A user step literally called "fetch#2" must not collide with the second "fetch",
    # or one step would replay the other's stored value.
    namer = CheckpointNamer()
    got = [namer.next(n) for n in ["fetch", "fetch#2", "fetch", "fetch#2", "fetch"]]
    assert len(set(got)) == len(got), got
    assert got[:2] == ["fetch", "fetch#2"]


@given(st.lists(st.sampled_from(["a", "b", "a#2", "b#2", "a#3", "a#2#2", "$emit:a"])))
def test_namer_is_deterministic_and_unique(calls: list[str]) -> None:
    first = list(map(CheckpointNamer().next, calls))
    namer = CheckpointNamer()
    replay = [namer.next(c) for c in calls]
    assert first == replay  # same calls in the same order: same names
    assert len(set(first)) == len(first)  # one checkpoint per call
    for call, name in zip(calls, first, strict=True):
        assert name == call or name.startswith(call + "#")


def test_internal_names() -> None:
    assert internal("sleep", "nap") == "$sleep:nap"
    assert internal("spawn", "") == "$spawn:"
    name = internal("emit", "order shipped")
    assert name == "$emit:order shipped"
    # Internal names pass validation only when reserved names are allowed.
    assert validate_name(name, what="step name", allow_reserved=True) == name
    with pytest.raises(InvalidInput):
        validate_name(name, what="step name")


@given(st.sampled_from(["sleep", "emit", "spawn", "join"]), st.text(max_size=50))
def test_internal_names_cannot_collide_with_user_names(kind: str, name: str) -> None:
    made = internal(kind, name)
    assert made == f"${kind}:{name}"
    # Every internal name starts with '$', which no accepted user name does.
    with pytest.raises(InvalidInput):
        validate_name(made, what="step name")


def test_child_event() -> None:
    task_id = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
    assert child_event(task_id) == "$task:01890a5d-ac96-774b-bcce-b302099a8057"
    assert child_event(str(task_id)) == child_event(task_id)
    assert child_event(task_id).startswith("$")
    # User code can never emit it: event names starting with '$' are refused.
    with pytest.raises(InvalidInput, match="reserved"):
        validate_name(child_event(task_id), what="event name")
    assert len(child_event(uuid.uuid4())) <= MAX_NAME


# -- one validation for every named thing ------------------------------------------------


async def _fn(ctx: Any, params: Any) -> None:
    return None


BAD_TASK_NAMES = [
    pytest.param("", "task name must be 1 to 200 characters long, got 0", id="empty"),
    pytest.param("t" * 300, "task name must be 1 to 200 characters long, got 300", id="300"),
    pytest.param("a\x00b", "task name 'a\\\\x00b' contains control characters", id="nul"),
    pytest.param("$reserved", "task name '\\$reserved' starts with '\\$'", id="reserved"),
    pytest.param(42, "task name must be a string, got int", id="not-a-string"),
]


@pytest.mark.parametrize(("name", "message"), BAD_TASK_NAMES)
def test_task_definition_validates_its_name(name: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        dt.TaskDefinition(name=name, fn=_fn)


@pytest.mark.parametrize(("name", "message"), BAD_TASK_NAMES)
def test_task_decorator_validates_its_name(name: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        dt.task(name)(_fn)


@pytest.mark.parametrize(("name", "message"), BAD_TASK_NAMES[:-1])  # a non-str: unset
def test_task_class_validates_its_name(name: Any, message: str) -> None:
    class Bad(dt.Task[Any, None]):
        async def run(self, params: Any, ctx: dt.TaskContext) -> None:
            return None

    Bad.name = name
    with pytest.raises(InvalidInput, match=message):
        Bad.definition()


def test_task_decorator_defaults_only_a_missing_name() -> None:
    assert dt.task()(_fn).name == "_fn"
    assert dt.task(None)(_fn).name == "_fn"
    assert dt.task("given")(_fn).name == "given"


def test_evolve_validates_the_name_too() -> None:
    definition = dt.TaskDefinition(name="ok", fn=_fn)
    with pytest.raises(InvalidInput, match="task name"):
        attrs.evolve(definition, name="bad\x00")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "header name must be 1 to 200 characters long, got 0"),
        ("h" * 201, "header name must be 1 to 200 characters long, got 201"),
        ("trace\x00id", "header name 'trace\\\\x00id' contains control characters"),
        ("line\nbreak", "header name .* contains control characters"),
        ("$internal", "header name '\\$internal' starts with '\\$'"),
    ],
)
def test_header_names_follow_the_same_rules(key: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        dt.SpawnOptions(headers={"ok": 1, key: "v"})


def test_header_names_that_are_fine() -> None:
    headers = {"trace-id": "x", "tenant": 1, "h" * 200: None, "with $ inside": True}
    assert dt.SpawnOptions(headers=headers).headers == headers
