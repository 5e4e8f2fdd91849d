-- durable_trio schema, version 1.
--
-- "@schema" is replaced by the client's schema name quoted by psycopg.sql.Identifier,
-- "@schema_literal" by the same name as a string literal (psycopg.sql.Literal).
-- Every state change goes through one of the functions below, so each is one round trip
-- and one transaction. The legal moves mirror src/durable_trio/_core/states.py; every
-- write made on behalf of a worker is fenced: it happens only while that worker holds a
-- live lease on the run (invariant 2 in docs/architecture.md).

-- The database's clock is the only clock. Tests move it forward for every connection at
-- once by raising the offset (durable_trio.testing.advance_clock).
CREATE TABLE @schema.clock (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    offset_by interval NOT NULL DEFAULT '0 seconds'
);
INSERT INTO @schema.clock DEFAULT VALUES;

-- PL/pgSQL rather than SQL: a SQL function that cannot be inlined (this one has a
-- sub-select) is re-planned on every call, which cost ~50 us per call in the hot path.
CREATE FUNCTION @schema.clock_now() RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN clock_timestamp() + (SELECT offset_by FROM @schema.clock);
END
$$;

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


-- Fencing: lock the run iff this worker holds a live lease on it. Callers that already
-- read the clock pass it in (each clock_now() call is a query of its own).
-- PL/pgSQL so its plan is cached per session (as a SQL function it was re-planned on
-- every call: ~0.2 ms of every checkpoint, completion and suspension). NO KEY UPDATE is
-- enough: it conflicts with every writer of the row, and spares the key lock.
CREATE FUNCTION @schema.lock_owned_run(p_run uuid, p_worker text, p_now timestamptz DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_task uuid;
BEGIN
    SELECT r.task_id INTO v_task FROM @schema.runs r
    WHERE r.run_id = p_run AND r.worker_id = p_worker AND r.state = 'running'
      AND r.lease_expires_at > coalesce(p_now, @schema.clock_now())
    FOR NO KEY UPDATE;
    RETURN v_task;
END
$$;


CREATE FUNCTION @schema.notify_queue(p_queue text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('durable_trio', @schema_literal || '.' || p_queue)
$$;


-- Emit an event and wake every run waiting for it. Serialised per (queue, event) with an
-- advisory lock shared with await_event, so an emit racing a wait never loses the wake-up.
CREATE FUNCTION @schema.emit_event(p_queue text, p_event text, p_payload jsonb)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_woken integer;
    v_queues text[];
    v_queue text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(@schema_literal || '.' || p_queue || '/' || p_event, 0));
    INSERT INTO @schema.events (queue, event_name, payload, emitted_at)
    VALUES (p_queue, p_event, p_payload, v_now)
    ON CONFLICT (queue, event_name)
    DO UPDATE SET payload = EXCLUDED.payload, emitted_at = EXCLUDED.emitted_at;

    WITH gone AS (
        DELETE FROM @schema.waits
        WHERE queue = p_queue AND event_name = p_event
        RETURNING run_id, task_id, step_name
    ), saved AS (
        INSERT INTO @schema.checkpoints (task_id, name, value, run_id, created_at)
        SELECT task_id, step_name, jsonb_build_object('payload', p_payload), run_id, v_now
        FROM gone
        ON CONFLICT (task_id, name) DO NOTHING
    ), woke AS (
        UPDATE @schema.runs r SET state = 'pending', available_at = v_now,
            wake_reason = 'event'
        FROM gone WHERE r.run_id = gone.run_id AND r.state = 'sleeping'
        RETURNING r.task_id, r.queue
    ), tasks_woke AS (
        UPDATE @schema.tasks t SET state = 'pending'
        FROM woke WHERE t.task_id = woke.task_id AND t.state = 'sleeping'
    )
    -- The waiter's queue, which for a join across queues is not the event's queue.
    SELECT count(*), coalesce(array_agg(DISTINCT woke.queue), '{}') INTO v_woken, v_queues
    FROM woke;
    FOREACH v_queue IN ARRAY v_queues LOOP
        PERFORM @schema.notify_queue(v_queue);
    END LOOP;
    RETURN v_woken;
END
$$;


-- A task reached a terminal state: tell a parent that may be joining it.
CREATE FUNCTION @schema.announce_end(p_task uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    SELECT queue, parent_task_id, state, result, error, cancel_reason INTO t
    FROM @schema.tasks WHERE task_id = p_task;
    IF t.parent_task_id IS NOT NULL THEN
        PERFORM @schema.emit_event(t.queue, '$task:' || p_task::text, jsonb_build_object(
            'state', t.state, 'result', t.result, 'error', t.error,
            'reason', t.cancel_reason));
    END IF;
END
$$;


-- Cancel a task and, recursively, every unfinished descendant. Running attempts notice at
-- their next heartbeat (their run is no longer 'running'), or at once through the notify.
CREATE FUNCTION @schema.cancel_task(p_task uuid, p_reason text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_ids uuid[];
    v_id uuid;
BEGIN
    WITH RECURSIVE tree AS (
        SELECT task_id FROM @schema.tasks WHERE task_id = p_task
        UNION
        SELECT c.task_id FROM @schema.tasks c JOIN tree ON c.parent_task_id = tree.task_id
    )
    SELECT array_agg(t.task_id ORDER BY t.task_id) INTO v_ids
    FROM @schema.tasks t JOIN tree USING (task_id)
    WHERE t.state NOT IN ('completed', 'failed', 'cancelled');
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    -- Lock runs before tasks, the order every other function uses (no deadlocks), then
    -- re-check under the locks: a task that finished meanwhile keeps its outcome.
    PERFORM 1 FROM @schema.runs WHERE task_id = ANY (v_ids)
        AND state IN ('pending', 'running', 'sleeping') ORDER BY run_id FOR UPDATE;
    PERFORM 1 FROM @schema.tasks WHERE task_id = ANY (v_ids) ORDER BY task_id FOR UPDATE;
    WITH done AS (
        UPDATE @schema.tasks SET state = 'cancelled', finished_at = v_now,
            cancel_reason = CASE WHEN task_id = p_task THEN p_reason
                                 ELSE 'parent ' || p_task::text || ' ended' END
        WHERE task_id = ANY (v_ids) AND state NOT IN ('completed', 'failed', 'cancelled')
        RETURNING task_id
    )
    SELECT array_agg(done.task_id ORDER BY done.task_id) INTO v_ids FROM done;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    UPDATE @schema.runs SET state = 'cancelled', finished_at = v_now, lease_expires_at = NULL
    WHERE task_id = ANY (v_ids) AND state IN ('pending', 'running', 'sleeping');
    DELETE FROM @schema.waits WHERE task_id = ANY (v_ids);
    FOREACH v_id IN ARRAY v_ids LOOP
        PERFORM @schema.announce_end(v_id);
    END LOOP;
    PERFORM pg_notify('durable_trio_cancel', @schema_literal);
    RETURN array_length(v_ids, 1);
END
$$;


CREATE FUNCTION @schema.spawn_task(
    p_task uuid, p_run uuid, p_queue text, p_name text, p_params jsonb, p_headers jsonb,
    p_retry jsonb, p_max_attempts integer, p_priority integer, p_delay interval,
    p_start_at timestamptz, p_idempotency_key text, p_max_pending_delay interval,
    p_max_duration interval, p_parent uuid
) RETURNS TABLE (task_id uuid, run_id uuid, attempt integer, created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_root uuid := p_task;
BEGIN
    IF p_parent IS NOT NULL THEN
        SELECT coalesce(t.root_task_id, t.task_id) INTO v_root
        FROM @schema.tasks t WHERE t.task_id = p_parent;
    END IF;
    INSERT INTO @schema.tasks AS t (task_id, queue, task_name, params, headers, retry,
        max_attempts, priority, max_pending_delay, max_duration, idempotency_key,
        parent_task_id, root_task_id, state, attempts, last_run_id, created_at)
    VALUES (p_task, p_queue, p_name, p_params, p_headers, p_retry, p_max_attempts,
        p_priority, p_max_pending_delay, p_max_duration, p_idempotency_key, p_parent,
        coalesce(v_root, p_task), 'pending', 1, p_run, v_now)
    ON CONFLICT (queue, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY SELECT t.task_id, t.last_run_id, t.attempts, false
            FROM @schema.tasks t
            WHERE t.queue = p_queue AND t.idempotency_key = p_idempotency_key;
        RETURN;
    END IF;
    INSERT INTO @schema.runs (run_id, task_id, queue, task_name, priority, attempt, state,
        available_at, created_at)
    VALUES (p_run, p_task, p_queue, p_name, p_priority, 1, 'pending',
        coalesce(p_start_at, v_now + coalesce(p_delay, '0 seconds')), v_now);
    PERFORM @schema.notify_queue(p_queue);
    RETURN QUERY SELECT p_task, p_run, 1, true;
END
$$;


-- Spawn many top-level tasks of one name with shared options in one statement
-- (spawn_many). Only ids and params vary per task. With an idempotency key every row
-- names the same task: the first row is spawned as spawn_task would (or the existing
-- task is found) and every row reports that task.
CREATE FUNCTION @schema.spawn_tasks(
    p_tasks uuid[], p_runs uuid[], p_params text[], p_queue text, p_name text,
    p_headers jsonb, p_retry jsonb, p_max_attempts integer, p_priority integer,
    p_delay interval, p_start_at timestamptz, p_idempotency_key text,
    p_max_pending_delay interval, p_max_duration interval
) RETURNS TABLE (task_id uuid, run_id uuid, attempt integer, created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_first record;
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        SELECT * INTO v_first FROM @schema.spawn_task(p_tasks[1], p_runs[1], p_queue, p_name,
            p_params[1]::jsonb, p_headers, p_retry, p_max_attempts, p_priority, p_delay,
            p_start_at, p_idempotency_key, p_max_pending_delay, p_max_duration, NULL);
        RETURN QUERY SELECT v_first.task_id, v_first.run_id, v_first.attempt,
            v_first.created AND u.ord = 1
        FROM unnest(p_tasks) WITH ORDINALITY AS u(t, ord) ORDER BY u.ord;
        RETURN;
    END IF;
    INSERT INTO @schema.tasks (task_id, queue, task_name, params, headers, retry,
        max_attempts, priority, max_pending_delay, max_duration, root_task_id, state,
        attempts, last_run_id, created_at)
    SELECT u.t, p_queue, p_name, u.p::jsonb, p_headers, p_retry, p_max_attempts,
        p_priority, p_max_pending_delay, p_max_duration, u.t, 'pending', 1, u.r, v_now
    FROM unnest(p_tasks, p_runs, p_params) AS u(t, r, p);
    INSERT INTO @schema.runs (run_id, task_id, queue, task_name, priority, attempt, state,
        available_at, created_at)
    SELECT u.r, u.t, p_queue, p_name, p_priority, 1, 'pending',
        coalesce(p_start_at, v_now + coalesce(p_delay, '0 seconds')), v_now
    FROM unnest(p_tasks, p_runs) AS u(t, r);
    PERFORM @schema.notify_queue(p_queue);
    RETURN QUERY SELECT u.t, u.r, 1, true FROM unnest(p_tasks, p_runs) AS u(t, r);
END
$$;


-- Claim up to p_limit due runs of the named tasks, highest priority first, then oldest.
-- Runs whose max_pending_delay has passed are cancelled instead of claimed. Only the
-- picked rows are examined, so a claim costs O(p_limit) however long the queue is.
CREATE FUNCTION @schema.claim_runs(
    p_queue text, p_worker text, p_names text[], p_limit integer, p_lease interval
-- headers, retry and checkpoints come back as JSON text: the worker decodes them with a
-- cache and a fast path for "{}" (they repeat, or are empty, for most runs).
) RETURNS TABLE (run_id uuid, task_id uuid, task_name text, attempt integer,
    params jsonb, headers text, retry text, max_attempts integer, checkpoints text,
    lease_expires_at timestamptz, claimed_at timestamptz)
LANGUAGE plpgsql
-- Left to choose, the plan cache re-plans these statements on every call (their array
-- parameters make the generic plan look dear): ~0.12 ms of a ~0.2 ms claim. Generic plans
-- cannot see how small p_limit is, hence the pick below is a statement of its own.
SET plan_cache_mode = force_generic_plan
-- Every statement below finds runs and tasks by id. Planned on small or unanalyzed
-- tables (the estimate for "= ANY (array)" is 10 ids), the generic plans hashed or
-- scanned those tables whole instead: 1,000 tasks cost ~0.2 ms a claim, growing until
-- the next analyze. jit off: a plan left with no index path (the clock's one row)
-- must not look costly enough to be compiled.
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_picked uuid[];
    v_runs uuid[];
    v_late uuid[];
    v_over uuid[];
    v_orphans uuid[];
    v_id uuid;
BEGIN
    SELECT array_agg(q.run_id) INTO v_picked FROM (
        SELECT c.run_id FROM @schema.runs c
        WHERE c.queue = p_queue AND c.state IN ('pending', 'sleeping')
          AND c.available_at <= v_now AND c.task_name = ANY (p_names)
        ORDER BY c.priority DESC, c.available_at, c.run_id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ) q;
    IF v_picked IS NULL THEN
        RETURN;
    END IF;
    -- Joined by id (index probes): in one statement with the LIMIT above, a generic plan
    -- hashed the whole tasks table (65 ms a claim with 1M pending).
    SELECT coalesce(array_agg(x.run_id)
                FILTER (WHERE NOT x.late AND NOT x.overdue AND NOT x.orphan), '{}'),
           coalesce(array_agg(x.task_id) FILTER (WHERE x.late), '{}'),
           coalesce(array_agg(x.task_id) FILTER (WHERE x.overdue AND NOT x.late), '{}'),
           coalesce(array_agg(x.task_id)
                FILTER (WHERE x.orphan AND NOT x.late AND NOT x.overdue), '{}')
    INTO v_runs, v_late, v_over, v_orphans
    FROM (
        SELECT r.run_id, r.task_id,
            coalesce(r.attempt = 1 AND t.first_started_at IS NULL
                AND r.available_at + t.max_pending_delay < v_now, false) AS late,
            -- max_duration counts sleeps too: a task woken (or retried) too late ends here.
            -- A child whose parent already ended unsuccessfully (it was spawned in a
            -- transaction that raced the parent's cancellation) is cancelled here too.
            coalesce(t.first_started_at + t.max_duration < v_now, false) AS overdue,
            coalesce(p.state IN ('failed', 'cancelled'), false) AS orphan
        FROM @schema.runs r
        JOIN @schema.tasks t ON t.task_id = r.task_id
        LEFT JOIN @schema.tasks p ON p.task_id = t.parent_task_id
        WHERE r.run_id = ANY (v_picked)
    ) x;
    FOREACH v_id IN ARRAY v_late LOOP
        PERFORM @schema.cancel_task(v_id, 'max_pending_delay exceeded');
    END LOOP;
    FOREACH v_id IN ARRAY v_over LOOP
        PERFORM @schema.cancel_task(v_id, 'max_duration exceeded');
    END LOOP;
    FOREACH v_id IN ARRAY v_orphans LOOP
        PERFORM @schema.cancel_task(v_id, 'parent ended before this child started');
    END LOOP;

    RETURN QUERY
    WITH claimed AS (
        UPDATE @schema.runs r SET state = 'running', worker_id = p_worker,
            lease_expires_at = v_now + p_lease, claimed_at = v_now
        WHERE r.run_id = ANY (v_runs)
        RETURNING r.run_id, r.task_id, r.task_name, r.attempt, r.lease_expires_at
    ), started AS (
        UPDATE @schema.tasks t SET state = 'running',
            first_started_at = coalesce(t.first_started_at, v_now)
        FROM claimed WHERE t.task_id = claimed.task_id
        RETURNING t.task_id, t.params, t.headers, t.retry, t.max_attempts
    )
    SELECT c.run_id, c.task_id, c.task_name, c.attempt, s.params, s.headers::text,
        s.retry::text, s.max_attempts,
        (SELECT coalesce(jsonb_object_agg(k.name, k.value), '{}'::jsonb)
         FROM @schema.checkpoints k WHERE k.task_id = c.task_id)::text,
        c.lease_expires_at, v_now
    FROM claimed c JOIN started s USING (task_id);
END
$$;


-- Renew the leases this worker still holds; return those renewed. A run missing from the
-- answer was lost (expired, cancelled, or over its max_duration) and must be abandoned.
CREATE FUNCTION @schema.heartbeat(p_worker text, p_runs uuid[], p_lease interval)
RETURNS TABLE (run_id uuid, lease_expires_at timestamptz, renewed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_over uuid;
BEGIN
    FOR v_over IN
        SELECT t.task_id FROM @schema.runs r JOIN @schema.tasks t USING (task_id)
        WHERE r.run_id = ANY (p_runs) AND r.worker_id = p_worker AND r.state = 'running'
          AND t.max_duration IS NOT NULL AND t.first_started_at + t.max_duration < v_now
    LOOP
        PERFORM @schema.cancel_task(v_over, 'max_duration exceeded');
    END LOOP;
    -- A run whose row is locked is inside one of its own fenced transactions
    -- (ctx.transaction, spawn, emit): it is alive and ours, so it is reported as held
    -- rather than waited for; one slow user transaction must not stall every lease.
    RETURN QUERY
    WITH free AS (
        SELECT f.run_id FROM @schema.runs f
        WHERE f.run_id = ANY (p_runs) AND f.worker_id = p_worker AND f.state = 'running'
          AND f.lease_expires_at > v_now
        FOR NO KEY UPDATE SKIP LOCKED
    ), renewed AS (
        UPDATE @schema.runs r
        SET lease_expires_at = greatest(r.lease_expires_at, v_now + p_lease)
        FROM free WHERE r.run_id = free.run_id
        RETURNING r.run_id, r.lease_expires_at
    )
    SELECT n.run_id, n.lease_expires_at, true FROM renewed n
    UNION ALL
    SELECT b.run_id, b.lease_expires_at, false FROM @schema.runs b
    WHERE b.run_id = ANY (p_runs) AND b.worker_id = p_worker AND b.state = 'running'
      AND b.lease_expires_at > v_now
      AND NOT EXISTS (SELECT 1 FROM free WHERE free.run_id = b.run_id);
END
$$;


-- Record outcomes for many runs of one worker in one transaction (the worker batches
-- them: one round trip and one commit for every run that finished a step or the task
-- meanwhile). Checkpoints are written first, in the order given, then completions. A run
-- the worker no longer owns (lease expired, cancelled, reclaimed) gets nothing written;
-- the answer lists the runs that were owned.
-- p_writes is a JSON array in write order: {"run_id", "name", "value"} for a checkpoint,
-- {"run_id", "value"} (no name) for a completion with its result, each optionally with the
-- "claimed_at" of the claim it was made under. One JSON value rather than parallel arrays:
-- the client builds it with string joins, not per-element adapters.
CREATE FUNCTION @schema.record_runs(p_worker text, p_writes jsonb) RETURNS uuid[]
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_owned uuid[];
    v_ended uuid[];
    v_id uuid;
BEGIN
    -- One statement (one executor start); the fence locks in run_id order, as cancel_task
    -- does, so concurrent writers never deadlock.
    WITH w AS MATERIALIZED (
        -- "->" keeps a JSON null a jsonb null (jsonb_to_recordset would make it SQL NULL).
        SELECT (e.item ->> 'run_id')::uuid AS run_id, e.item ->> 'name' AS name,
            e.item -> 'value' AS value, (e.item ->> 'claimed_at')::timestamptz AS claimed_at,
            e.ord
        FROM jsonb_array_elements(p_writes) WITH ORDINALITY AS e(item, ord)
    ), owned AS MATERIALIZED (
        SELECT r.run_id, r.task_id FROM @schema.runs r
        WHERE r.run_id IN (SELECT w.run_id FROM w) AND r.worker_id = p_worker
          AND r.state = 'running' AND r.lease_expires_at > v_now
          -- Made under this claim: a run that slept and was claimed again by the same
          -- worker must not take a late write queued by the earlier claim.
          AND NOT EXISTS (SELECT 1 FROM w WHERE w.run_id = r.run_id
                          AND w.claimed_at IS DISTINCT FROM r.claimed_at
                          AND w.claimed_at IS NOT NULL)
        ORDER BY r.run_id
        FOR NO KEY UPDATE OF r
    ), saved AS (
        INSERT INTO @schema.checkpoints (task_id, name, value, run_id, created_at)
        SELECT o.task_id, w.name, w.value, w.run_id, v_now
        FROM w JOIN owned o ON o.run_id = w.run_id
        WHERE w.name IS NOT NULL
        ORDER BY w.ord
        ON CONFLICT (task_id, name) DO NOTHING
    ), done AS (
        UPDATE @schema.runs r SET state = 'completed', finished_at = v_now,
            lease_expires_at = NULL
        FROM w JOIN owned o ON o.run_id = w.run_id
        WHERE w.name IS NULL AND r.run_id = w.run_id
        RETURNING r.task_id, w.value AS result
    ), ended AS (
        UPDATE @schema.tasks t SET state = 'completed', result = done.result,
            finished_at = v_now
        FROM done WHERE t.task_id = done.task_id
        RETURNING t.task_id, t.parent_task_id
    )
    SELECT (SELECT coalesce(array_agg(o.run_id), '{}') FROM owned o),
        (SELECT array_agg(e.task_id ORDER BY e.task_id) FROM ended e
         WHERE e.parent_task_id IS NOT NULL)
    INTO v_owned, v_ended;
    FOREACH v_id IN ARRAY coalesce(v_ended, '{}') LOOP
        PERFORM @schema.announce_end(v_id);
    END LOOP;
    RETURN v_owned;
END
$$;


-- An attempt failed. With p_worker it is the worker reporting its own failure (fenced by
-- its lease); with p_worker NULL it is the reaper failing a run whose lease expired.
-- p_retry asks for another attempt after p_delay; the guard below never lets attempts
-- exceed max_attempts. Returns the task's new state, or NULL if fenced out.
CREATE FUNCTION @schema.fail_run(
    p_run uuid, p_worker text, p_error jsonb, p_retry boolean, p_delay interval,
    p_new_run uuid
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_task uuid;
    v_attempt integer;
    t record;
BEGIN
    IF p_worker IS NULL THEN
        SELECT r.task_id INTO v_task FROM @schema.runs r
        WHERE r.run_id = p_run AND r.state = 'running' AND r.lease_expires_at <= v_now
        FOR UPDATE SKIP LOCKED;
    ELSE
        v_task := @schema.lock_owned_run(p_run, p_worker, v_now);
    END IF;
    IF v_task IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE @schema.runs SET state = 'failed', finished_at = v_now, lease_expires_at = NULL,
        error = p_error
    WHERE run_id = p_run RETURNING attempt INTO v_attempt;
    SELECT * INTO t FROM @schema.tasks WHERE task_id = v_task FOR UPDATE;
    IF p_retry AND t.attempts < t.max_attempts THEN
        INSERT INTO @schema.runs (run_id, task_id, queue, task_name, priority, attempt, state,
            available_at, wake_reason, created_at)
        VALUES (p_new_run, v_task, t.queue, t.task_name, t.priority, v_attempt + 1,
            'pending', v_now + p_delay, 'retry', v_now);
        UPDATE @schema.tasks SET state = 'pending', attempts = v_attempt + 1,
            last_run_id = p_new_run, error = p_error
        WHERE task_id = v_task;
        PERFORM @schema.notify_queue(t.queue);
        RETURN 'pending';
    END IF;
    UPDATE @schema.tasks SET state = 'failed', error = p_error, finished_at = v_now
    WHERE task_id = v_task;
    -- Invariant 6: a failed parent takes every unfinished descendant with it.
    PERFORM @schema.cancel_task(c.task_id, 'parent ' || v_task::text || ' failed')
    FROM @schema.tasks c
    WHERE c.parent_task_id = v_task AND c.state NOT IN ('completed', 'failed', 'cancelled');
    PERFORM @schema.announce_end(v_task);
    RETURN 'failed';
END
$$;


-- Suspend a running attempt until p_wake_at (a durable sleep); the slot is freed.
CREATE FUNCTION @schema.suspend_run(p_run uuid, p_worker text, p_wake_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_task uuid := @schema.lock_owned_run(p_run, p_worker);
BEGIN
    IF v_task IS NULL THEN
        RETURN false;
    END IF;
    UPDATE @schema.runs SET state = 'sleeping', available_at = p_wake_at, worker_id = NULL,
        lease_expires_at = NULL, wake_reason = 'timer'
    WHERE run_id = p_run;
    UPDATE @schema.tasks SET state = 'sleeping' WHERE task_id = v_task;
    RETURN true;
END
$$;


-- Await an event (or a child's end). Returns one of:
--   ('fenced', NULL)      this worker lost the run: write nothing more
--   ('event', payload)    delivered now (checkpointed under p_step)
--   ('timeout', NULL)     the timeout passed first (checkpointed under p_step)
--   ('suspended', NULL)   the run now sleeps until the event or the timeout
CREATE FUNCTION @schema.await_event(
    p_run uuid, p_worker text, p_queue text, p_event text, p_step text,
    p_timeout interval
) RETURNS TABLE (outcome text, payload jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_task uuid := @schema.lock_owned_run(p_run, p_worker, v_now);
    v_payload jsonb;
    v_value jsonb;
    v_deadline timestamptz;
BEGIN
    IF v_task IS NULL THEN
        RETURN QUERY SELECT 'fenced'::text, NULL::jsonb;
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(@schema_literal || '.' || p_queue || '/' || p_event, 0));
    SELECT value INTO v_value FROM @schema.checkpoints WHERE task_id = v_task AND name = p_step;
    IF FOUND THEN
        DELETE FROM @schema.waits WHERE task_id = v_task;
        IF v_value ? 'timeout' THEN
            RETURN QUERY SELECT 'timeout'::text, NULL::jsonb;
        ELSE
            RETURN QUERY SELECT 'event'::text, v_value -> 'payload';
        END IF;
        RETURN;
    END IF;
    -- The deadline is fixed by the first call: a replay must not push it back.
    SELECT w.timeout_at INTO v_deadline FROM @schema.waits w
    WHERE w.task_id = v_task AND w.step_name = p_step AND w.event_name = p_event;
    IF NOT FOUND THEN
        v_deadline := v_now + p_timeout;
    END IF;
    SELECT e.payload INTO v_payload FROM @schema.events e
    WHERE e.queue = p_queue AND e.event_name = p_event;
    IF FOUND THEN
        v_value := jsonb_build_object('payload', v_payload);
    ELSIF v_deadline IS NOT NULL AND v_deadline <= v_now THEN
        v_value := jsonb_build_object('timeout', true);
    ELSE
        INSERT INTO @schema.waits (task_id, run_id, queue, event_name, step_name, timeout_at)
        VALUES (v_task, p_run, p_queue, p_event, p_step, v_deadline)
        ON CONFLICT (task_id) DO UPDATE SET run_id = EXCLUDED.run_id,
            event_name = EXCLUDED.event_name, step_name = EXCLUDED.step_name,
            timeout_at = EXCLUDED.timeout_at, queue = EXCLUDED.queue;
        UPDATE @schema.runs SET state = 'sleeping', worker_id = NULL, lease_expires_at = NULL,
            available_at = coalesce(v_deadline, 'infinity'), wake_reason = 'timeout'
        WHERE run_id = p_run;
        UPDATE @schema.tasks SET state = 'sleeping' WHERE task_id = v_task;
        RETURN QUERY SELECT 'suspended'::text, NULL::jsonb;
        RETURN;
    END IF;
    INSERT INTO @schema.checkpoints (task_id, name, value, run_id, created_at)
    VALUES (v_task, p_step, v_value, p_run, v_now);
    DELETE FROM @schema.waits WHERE task_id = v_task;
    RETURN QUERY SELECT CASE WHEN v_value ? 'timeout' THEN 'timeout' ELSE 'event' END,
        v_value -> 'payload';
END
$$;


-- Graceful shutdown: hand a run back without spending an attempt.
CREATE FUNCTION @schema.release_run(p_run uuid, p_worker text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_task uuid := @schema.lock_owned_run(p_run, p_worker);
    v_queue text;
BEGIN
    IF v_task IS NULL THEN
        RETURN false;
    END IF;
    UPDATE @schema.runs SET state = 'pending', worker_id = NULL, lease_expires_at = NULL,
        available_at = @schema.clock_now(), wake_reason = 'released'
    WHERE run_id = p_run RETURNING queue INTO v_queue;
    UPDATE @schema.tasks SET state = 'pending' WHERE task_id = v_task;
    PERFORM @schema.notify_queue(v_queue);
    RETURN true;
END
$$;
