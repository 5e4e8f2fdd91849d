"""Hypothesis settings profiles for the stateful tests.

The profiles are registered here and *selected by name* in the test (never loaded
globally), so other Hypothesis tests in the same session keep their own settings.

- ``stateful-default``: what CI runs, 100 examples x 30 steps.
- ``stateful-thorough``: 1000 examples x 50 steps; chosen with ``DURABLE_THOROUGH=1``.

Failing examples are saved under ``.hypothesis/stateful`` (gitignored) and replayed first
on the next run. Time is faked (the database clock), so ``deadline`` is off: a rule's real
duration says nothing about correctness.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

_DB = DirectoryBasedExampleDatabase(
    str(Path(__file__).resolve().parents[2] / ".hypothesis" / "stateful")
)
_COMMON = {
    "deadline": None,
    "database": _DB,
    "print_blob": True,
    "report_multiple_bugs": False,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
}

settings.register_profile("stateful-default", max_examples=100, stateful_step_count=30, **_COMMON)
settings.register_profile("stateful-thorough", max_examples=1000, stateful_step_count=50, **_COMMON)
