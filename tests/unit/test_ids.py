"""UUIDv7 (RFC 9562): version and variant bits, time ordering, determinism."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durable_trio._core import ids
from durable_trio._core.ids import uuid7

MS = st.integers(0, (1 << 48) - 1)
RAND = st.binary(min_size=10, max_size=10)


@given(MS, RAND)
def test_version_and_variant(ms: int, rand: bytes) -> None:
    value = uuid7(ms, rand)
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert (value.int >> 76) & 0xF == 0x7
    assert (value.int >> 62) & 0b11 == 0b10
    assert str(value)[14] == "7"
    assert str(value)[19] in "89ab"


@given(MS, RAND)
def test_layout(ms: int, rand: bytes) -> None:
    value = uuid7(ms, rand).int
    tail = int.from_bytes(rand, "big")
    assert value >> 80 == ms  # unix_ts_ms: the top 48 bits
    assert (value >> 64) & 0xFFF == tail >> 68  # rand_a: the first 12 random bits
    assert value & ((1 << 62) - 1) == tail & ((1 << 62) - 1)  # rand_b: the last 62


@given(MS, RAND)
def test_deterministic_given_time_and_randomness(ms: int, rand: bytes) -> None:
    assert uuid7(ms, rand) == uuid7(ms, rand)
    assert uuid7(unix_ms=ms, rand=rand) == uuid7(ms, rand)


def test_known_value() -> None:
    # RFC 9562 appendix A.6 example: 2022-02-22 19:22:22 UTC = 0x017F22E279B0 ms.
    tail = (0xCC3 << 68) | 0x18C4DC0C0C07398F  # rand_a, then rand_b (variant bits apart)
    value = uuid7(0x017F22E279B0, tail.to_bytes(10, "big"))
    assert value == uuid.UUID("017F22E2-79B0-7CC3-98C4-DC0C0C07398F")
    assert uuid7(0, bytes(10)) == uuid.UUID("00000000-0000-7000-8000-000000000000")
    top = uuid7((1 << 48) - 1, b"\xff" * 10)
    assert top == uuid.UUID("ffffffff-ffff-7fff-bfff-ffffffffffff")


@given(MS, MS, RAND, RAND)
def test_ordered_by_milliseconds(ms1: int, ms2: int, rand1: bytes, rand2: bytes) -> None:
    a, b = uuid7(ms1, rand1), uuid7(ms2, rand2)
    if ms1 < ms2:
        assert a < b
        assert str(a) < str(b)  # text order agrees (what an index on uuid::text would see)
        assert a.bytes < b.bytes  # and byte order (what Postgres' uuid comparison uses)
    elif ms1 > ms2:
        assert a > b


@given(MS, RAND, RAND)
def test_randomness_distinguishes_ids_in_the_same_millisecond(
    ms: int, rand1: bytes, rand2: bytes
) -> None:
    mask = (((1 << 12) - 1) << 68) | ((1 << 62) - 1)  # the 74 bits that are kept
    same = int.from_bytes(rand1, "big") & mask == int.from_bytes(rand2, "big") & mask
    assert (uuid7(ms, rand1) == uuid7(ms, rand2)) == same


def test_timestamp_is_truncated_to_48_bits() -> None:
    assert uuid7(1 << 48, bytes(10)) == uuid7(0, bytes(10))


def test_defaults_use_the_clock_and_os_randomness(monkeypatch: pytest.MonkeyPatch) -> None:
    rand = bytes(range(1, 11))
    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_700_000_000_123_456_789)
    monkeypatch.setattr(ids.os, "urandom", lambda n: rand[:n])
    value = uuid7()
    assert value == uuid7(1_700_000_000_123, rand)
    assert value.int >> 80 == 1_700_000_000_123


def test_unseeded_ids_differ() -> None:
    generated = {uuid7() for _ in range(1000)}
    assert len(generated) == 1000
    assert all(u.version == 7 for u in generated)


@given(MS, st.lists(RAND, max_size=5))
def test_texts_are_the_same_ids_as_hex(ms: int, rands: list[bytes]) -> None:
    texts = ids.uuid7_texts(len(rands), ms, b"".join(rands))
    assert texts == [uuid7(ms, rand).hex for rand in rands]
    assert len(set(ids.uuid7_texts(100))) == 100
