-- durable_trio schema, version 1.
--
-- "@schema" is replaced by the client's schema name quoted by psycopg.sql.Identifier,
-- "@schema_literal" by the same name as a string literal (psycopg.sql.Literal).
-- Tables and indexes only: every state change goes through one of the functions in
-- sql/functions/ (one file each, applied by migrate), so each is one round trip and one
-- transaction. The legal moves mirror src/durable_trio/_core/states.py; every
-- write made on behalf of a worker is fenced: it happens only while that worker holds a
-- live lease on the run (invariant 2 in docs/architecture.md).

-- The database's clock is the only clock. Tests move it forward for every connection at
-- once by raising the offset (durable_trio.testing.advance_clock).
CREATE TABLE @schema.clock (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    offset_by interval NOT NULL DEFAULT '0 seconds'
);
INSERT INTO @schema.clock DEFAULT VALUES;

CREATE TABLE @schema.tasks (
    task_id uuid PRIMARY KEY,
    queue text NOT NULL,
    task_name text NOT NULL,
    params jsonb NOT NULL,
    headers jsonb NOT NULL,
    retry jsonb NOT NULL,
    max_attempts integer NOT NULL CHECK (max_attempts >= 1),
    priority integer NOT NULL,
    max_pending_delay interval,
    max_duration interval,
    idempotency_key text,
    parent_task_id uuid,
    root_task_id uuid NOT NULL,
    state text NOT NULL CHECK (state IN
        ('pending', 'running', 'sleeping', 'completed', 'failed', 'cancelled')),
    attempts integer NOT NULL CHECK (attempts >= 1 AND attempts <= max_attempts),
    last_run_id uuid NOT NULL,
    result jsonb,
    error jsonb,
    cancel_reason text,
    created_at timestamptz NOT NULL,
    first_started_at timestamptz,
    finished_at timestamptz
-- Room on each page lets the state changes (and the result) be HOT updates: no index
-- entries are written for them, since no indexed column changes.
) WITH (fillfactor = 70);
CREATE UNIQUE INDEX tasks_idempotency ON @schema.tasks (queue, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_parent ON @schema.tasks (parent_task_id)
    WHERE parent_task_id IS NOT NULL;

CREATE TABLE @schema.runs (
    run_id uuid PRIMARY KEY,
    task_id uuid NOT NULL REFERENCES @schema.tasks ON DELETE CASCADE,
    queue text NOT NULL,
    task_name text NOT NULL,
    priority integer NOT NULL,
    attempt integer NOT NULL CHECK (attempt >= 1),
    state text NOT NULL CHECK (state IN
        ('pending', 'running', 'sleeping', 'completed', 'failed', 'cancelled')),
    available_at timestamptz NOT NULL,
    worker_id text,
    lease_expires_at timestamptz,
    wake_reason text,
    error jsonb,
    created_at timestamptz NOT NULL,
    claimed_at timestamptz,
    finished_at timestamptz,
    UNIQUE (task_id, attempt)
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_threshold = 1000);
-- Only claimable rows are indexed, so finished work never sits in the claim path.
CREATE INDEX runs_claim ON @schema.runs (queue, priority DESC, available_at, run_id)
    WHERE state IN ('pending', 'sleeping');
-- For next_due. Untimed event waits (available_at 'infinity') are never due, and leaving
-- them out keeps the claim off this index: a claim's "available_at <= now" cannot prove
-- this predicate, so the only ordered path left to it is runs_claim. (Planned on a table
-- without statistics yet, it had read every due run here and sorted them, per claim.)
CREATE INDEX runs_due ON @schema.runs (queue, available_at)
    WHERE state IN ('pending', 'sleeping') AND available_at < 'infinity';
CREATE INDEX runs_leased ON @schema.runs (queue, lease_expires_at)
    WHERE state = 'running';

CREATE TABLE @schema.checkpoints (
    task_id uuid NOT NULL REFERENCES @schema.tasks ON DELETE CASCADE,
    name text NOT NULL,
    value jsonb NOT NULL,
    run_id uuid NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (task_id, name)
);

-- Events are sticky: once emitted, every later await_event of that name on that queue
-- returns at once. A second emit replaces the payload (last write wins) for waits that
-- have not received it yet; waits already woken keep the payload they checkpointed.
CREATE TABLE @schema.events (
    queue text NOT NULL,
    event_name text NOT NULL,
    payload jsonb NOT NULL,
    emitted_at timestamptz NOT NULL,
    PRIMARY KEY (queue, event_name)
);

-- A suspended task waiting for an event (or a child: event "$task:<id>"). One row per
-- task: a task waits for one thing at a time. The row outlives the run that made it (a
-- retry replaying the same await keeps the original deadline).
CREATE TABLE @schema.waits (
    task_id uuid PRIMARY KEY REFERENCES @schema.tasks ON DELETE CASCADE,
    run_id uuid NOT NULL,
    queue text NOT NULL,
    event_name text NOT NULL,
    step_name text NOT NULL,
    timeout_at timestamptz
);
CREATE INDEX waits_event ON @schema.waits (queue, event_name);
