"""UUIDv7: time-ordered ids, so new tasks and runs land at the end of their indexes."""

from __future__ import annotations

import os
import time
from uuid import UUID


def uuid7(unix_ms: int | None = None, rand: bytes | None = None) -> UUID:
    """A version-7 UUID (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits."""
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    return UUID(int=_uuid7_int(_head(ms), os.urandom(10) if rand is None else rand))


def uuid7_texts(count: int, unix_ms: int | None = None, rand: bytes | None = None) -> list[str]:
    """`count` UUIDv7s of one millisecond as 32 hex digits each (Postgres reads them as
    uuid), from 10 random bytes each (`rand`: all of them). spawn_many only sends its ids,
    so building UUID objects for them was wasted work."""
    head = _head(time.time_ns() // 1_000_000 if unix_ms is None else unix_ms)
    data = os.urandom(10 * count) if rand is None else rand
    return [f"{_uuid7_int(head, data[i : i + 10]):032x}" for i in range(0, 10 * count, 10)]


def _head(ms: int) -> int:
    return ((ms & ((1 << 48) - 1)) << 80) | (0x7 << 76) | (0b10 << 62)  # version, variant


def _uuid7_int(head: int, rand: bytes) -> int:
    tail = int.from_bytes(rand, "big")
    return head | ((tail >> 68) & 0xFFF) << 64 | tail & ((1 << 62) - 1)  # rand_a, rand_b
