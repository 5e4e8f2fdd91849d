"""User-facing option types, validated at construction so bad input never reaches SQL."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from .._errors import InvalidInput
from .checks import integer_in
from .durations import Duration, check_instant, to_seconds
from .names import validate_name, validate_queue
from .retry import RetryStrategy

MAX_PRIORITY = 1_000_000


def _pending_delay(value: Duration | None) -> float | None:
    return None if value is None else to_seconds(value, what="max_pending_delay", allow_zero=False)


def _max_duration(value: Duration | None) -> float | None:
    return None if value is None else to_seconds(value, what="max_duration", allow_zero=False)


def _delay(value: Duration | None) -> float | None:
    return None if value is None else to_seconds(value, what="delay")


def _claim_timeout(value: Duration) -> float:
    return to_seconds(value, what="claim_timeout", allow_zero=False)


def _poll_interval(value: Duration) -> float:
    return to_seconds(value, what="poll_interval", allow_zero=False)


def _shutdown_grace(value: Duration) -> float:
    return to_seconds(value, what="shutdown_grace")


def _retention(value: Duration | None) -> float | None:
    return None if value is None else to_seconds(value, what="retention", allow_zero=False)


def _queues(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise InvalidInput(f"queues must be a list of queue names, got the string {value!r}")
    queues = tuple(validate_queue(q) for q in value)
    if not queues:
        raise InvalidInput("queues must name at least one queue (or be None: the client's)")
    repeated = sorted({q for q in queues if queues.count(q) > 1})
    if repeated:
        raise InvalidInput(f"queues lists {', '.join(map(repr, repeated))} more than once")
    return queues


def check_headers(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """Headers as a dict (None: none), or InvalidInput saying what is wrong with them."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidInput(f"headers must be a mapping with string keys, got {value!r:.200}")
    for key in value:  # the same rules as every other name
        validate_name(key, what="header name")
    return dict(value)


def _queue(value: str | None) -> str | None:
    return None if value is None else validate_queue(value)


@attrs.frozen
class CancellationPolicy:
    """Cancel a task automatically when it waits or runs too long.

    ``max_pending_delay``: cancel if no attempt has started this long after the task
    became due. ``max_duration``: cancel if the task is still not finished this long
    after its first attempt started (sleeps included). Each is seconds or a
    `timedelta`, more than zero and at most 100 years (``MAX_DURATION``).

    Enforced whatever the task is doing: when a worker would claim it, at each heartbeat
    of a running attempt, and otherwise (suspended in a sleep, an event wait or a join;
    pending under a name no worker registers) by the sweep every worker makes each
    ``poll_interval``. Cancelling a task cancels its unfinished descendants too.
    """

    max_pending_delay: float | None = attrs.field(default=None, converter=_pending_delay)
    max_duration: float | None = attrs.field(default=None, converter=_max_duration)

    def to_json(self) -> dict[str, float | None]:
        return {"max_pending_delay": self.max_pending_delay, "max_duration": self.max_duration}


@attrs.frozen
class SpawnOptions:
    """Per-spawn settings. Every field is optional.

    - ``max_attempts``: attempts before the task fails for good (>= 1; default 5).
    - ``retry``: a `RetryStrategy` (default exponential from 1 s, capped at 1 h).
    - ``headers``: JSON metadata readable as ``ctx.headers`` (tracing ids, tenants...);
      its keys follow the rules of task names (1-200 printable characters, no leading
      ``$``).
    - ``queue``: spawn onto another queue than the client's.
    - ``priority``: higher is claimed first (default 0).
    - ``delay`` / ``start_at``: do not start before then. ``delay`` is seconds or a
      `timedelta` of at most 100 years (``MAX_DURATION``, as for every duration);
      ``start_at`` a timezone-aware datetime at most that far ahead.
    - ``idempotency_key``: a second spawn with the same key on the same queue returns the
      first task and writes nothing (1-500 characters, not starting with ``schedule:``:
      those are the keys of schedule slots).
    - ``cancellation``: a `CancellationPolicy`.
    """

    max_attempts: int = attrs.field(default=5)
    retry: RetryStrategy = attrs.field(factory=lambda: RetryStrategy.exponential(1.0))
    headers: dict[str, Any] = attrs.field(factory=dict, converter=check_headers)
    queue: str | None = attrs.field(default=None, converter=_queue)
    priority: int = attrs.field(default=0)
    delay: float | None = attrs.field(default=None, converter=_delay)
    start_at: datetime | None = attrs.field(default=None)
    idempotency_key: str | None = attrs.field(default=None)
    cancellation: CancellationPolicy | None = attrs.field(default=None)

    @max_attempts.validator
    def _check_attempts(self, _: Any, value: int) -> None:
        integer_in(value, "max_attempts", 1, 10_000)

    @retry.validator
    def _check_retry(self, _: Any, value: RetryStrategy) -> None:
        if not isinstance(value, RetryStrategy):
            raise InvalidInput(f"retry must be a RetryStrategy, got {value!r}")

    @priority.validator
    def _check_priority(self, _: Any, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_PRIORITY:
            raise InvalidInput(
                f"priority must be an integer within +-{MAX_PRIORITY}, got {value!r}"
            )

    @start_at.validator
    def _check_start_at(self, _: Any, value: datetime | None) -> None:
        if value is None:
            return
        check_instant(value, what="start_at", now=datetime.now(UTC))
        if self.delay is not None:
            raise InvalidInput("give either delay or start_at, not both")

    @idempotency_key.validator
    def _check_key(self, _: Any, value: str | None) -> None:
        check_idempotency_key(value)

    @cancellation.validator
    def _check_cancellation(self, _: Any, value: CancellationPolicy | None) -> None:
        if value is not None and not isinstance(value, CancellationPolicy):
            raise InvalidInput(f"cancellation must be a CancellationPolicy, got {value!r}")


# The idempotency keys of schedule slots ('schedule:<id>:<slot>', _core.schedules.slot_key).
SCHEDULE_KEYS = "schedule:"


def check_idempotency_key(value: Any, what: str = "idempotency_key") -> str | None:
    """An idempotency key (None: none), or InvalidInput saying what a key must be."""
    if value is not None and (not isinstance(value, str) or not 1 <= len(value) <= 500):
        raise InvalidInput(f"{what} must be a string of 1-500 characters, got {value!r}")
    if value is not None and "\x00" in value:  # Postgres text cannot hold NUL
        raise InvalidInput(f"{what} must not contain NUL characters, got {value!r}")
    if value is not None and value.startswith(SCHEDULE_KEYS):
        # A task spawned under a slot's key would stand in for that slot: it would spawn
        # nothing. Only the schedules' own spawns (through SQL) may use these keys.
        raise InvalidInput(
            f"{what} {value!r} starts with {SCHEDULE_KEYS!r}, which is reserved for the "
            "tasks of schedule slots: choose a key without that prefix"
        )
    return value


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@attrs.frozen
class WorkerOptions:
    """How a worker claims and runs tasks.

    - ``concurrency``: runs whose task code executes at once (default 8). A run whose
      code has returned frees its slot while its completion is being written, so a
      worker may hold up to twice this many claimed runs for that moment.
    - ``claim_timeout``: the lease a claim takes; the heartbeat renews it every third of
      this. A worker that vanishes loses its runs this long after its last heartbeat.
      Like ``poll_interval`` and ``shutdown_grace``: seconds or a `timedelta`, at most
      100 years (``MAX_DURATION``).
    - ``prefetch``: runs claimed ahead, beyond ``concurrency``, that wait for a slot
      (default 0: none). Each starts the moment a slot frees, without a claim round
      trip in between; the worker claims more as they start. Held runs are leased and
      heartbeated like running ones and handed back, attempt unspent, on shutdown; a
      worker that crashes holding them leaves them to their leases, and their retry
      spends an attempt, as for running ones. They are runs no other worker can take
      meanwhile: keep it small (0 to 10000). See docs/operations.md.
    - ``batch_size``: most runs claimed in one statement (default: ``concurrency +
      prefetch``).
    - ``poll_interval``: fallback polling when no notification arrives.
    - ``worker_id``: shown in the runs table (default ``host:pid``).
    - ``shutdown_grace``: on shutdown, how long in-flight runs may finish before they are
      cancelled and handed back without costing an attempt.
    - ``queues``: queues to work (default: the client's queue).
    - ``retention``: remove finished tasks (with their runs and checkpoints) and events
      older than this on the worker's periodic pass, once a minute, one worker of the
      schema at a time (`Durable.cleanup`; default None: keep everything).
    - ``version``: the version of the task code this worker runs (any 1-200 printable
      characters). Set, the worker stamps it on each task whose first run it claims, and
      claims only tasks that never ran or carry its version: tasks in flight when the
      code changed are left to workers still running the old code. Unset (default), the
      worker claims any task. See docs/versioning.md.
    """

    concurrency: int = attrs.field(default=8)
    claim_timeout: float = attrs.field(default=30.0, converter=_claim_timeout)
    batch_size: int | None = attrs.field(default=None)
    prefetch: int = attrs.field(default=0)
    poll_interval: float = attrs.field(default=1.0, converter=_poll_interval)
    worker_id: str = attrs.field(factory=default_worker_id)
    shutdown_grace: float = attrs.field(default=10.0, converter=_shutdown_grace)
    queues: tuple[str, ...] | None = attrs.field(default=None, converter=_queues)
    version: str | None = attrs.field(default=None)
    retention: float | None = attrs.field(default=None, converter=_retention)

    @concurrency.validator
    def _check_concurrency(self, _: Any, value: int) -> None:
        integer_in(value, "concurrency", 1, 10_000)

    @batch_size.validator
    def _check_batch(self, _: Any, value: int | None) -> None:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise InvalidInput(f"batch_size must be a positive integer, got {value!r}")

    @prefetch.validator
    def _check_prefetch(self, _: Any, value: int) -> None:
        integer_in(value, "prefetch", 0, 10_000)

    @claim_timeout.validator
    def _check_claim_timeout(self, _: Any, value: float) -> None:
        if value < 0.1:
            raise InvalidInput(f"claim_timeout must be at least 0.1 seconds, got {value!r}")

    @worker_id.validator
    def _check_worker_id(self, _: Any, value: str) -> None:
        if not isinstance(value, str) or not 1 <= len(value) <= 200:
            raise InvalidInput(f"worker_id must be a string of 1-200 characters, got {value!r}")
        if not value.isprintable():  # NUL cannot be stored; the id is shown in tables and logs
            raise InvalidInput(f"worker_id must not contain control characters, got {value!r}")

    @version.validator
    def _check_version(self, _: Any, value: str | None) -> None:
        if value is None:
            return
        if not isinstance(value, str) or not 1 <= len(value) <= 200 or not value.isprintable():
            raise InvalidInput(
                f"version must be None or a string of 1-200 printable characters, got {value!r}"
            )

    @property
    def effective_batch(self) -> int:
        """Most runs claimed in one statement: ``batch_size``, else all that fit."""
        return self.batch_size or self.concurrency + self.prefetch

    @property
    def heartbeat_interval(self) -> float:
        return heartbeat_interval(self.claim_timeout)


def heartbeat_interval(claim_timeout: float) -> float:
    """Renew leases three times per lease: one missed beat never loses a run."""
    return claim_timeout / 3.0


def extend_seconds(extend_by: Duration | None, claim_timeout: float) -> float:
    """Lease extension asked by ``ctx.heartbeat(extend_by)``: at least a normal lease,
    at most `MAX_DURATION`."""
    if extend_by is None:
        return claim_timeout
    seconds = to_seconds(extend_by, what="extend_by", allow_zero=False)
    return max(seconds, claim_timeout)


def as_timedelta(seconds: float) -> timedelta:
    return timedelta(seconds=seconds) if math.isfinite(seconds) else timedelta.max


def registry_ttl(claim_timeout: float, poll_interval: float) -> float:
    """How long a worker's registry row stays live without a refresh. Workers refresh it
    on their periodic pass (at least every poll_interval and every third of a lease), so
    three missed passes, or a whole lease, mean the worker is gone."""
    return max(claim_timeout, 3.0 * poll_interval)


# A worker reports due runs that no live worker serves this often, once they have waited
# this long (seconds).
UNSERVED_EVERY = 60.0
UNSERVED_AFTER = 300.0

# Workers with a retention remove old finished work this often (seconds), spending at most
# this share of the time removing: flat out, a cleanup beside a full-speed drain cost it
# 20-40% of its throughput; at 0.2, under 10% (the `retention` benchmark).
RETENTION_EVERY = 60.0
RETENTION_DUTY = 0.2
