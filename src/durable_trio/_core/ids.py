"""UUIDv7: time-ordered ids, so new tasks and runs land at the end of their indexes."""

from __future__ import annotations

import os
import time
from uuid import UUID


def uuid7(unix_ms: int | None = None, rand: bytes | None = None) -> UUID:
    """A version-7 UUID (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits."""
    ms = time.time_ns() // 1_000_000 if unix_ms is None else unix_ms
    tail = int.from_bytes(os.urandom(10) if rand is None else rand, "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((tail >> 68) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= tail & ((1 << 62) - 1)  # rand_b, 62 bits
    return UUID(int=value)
