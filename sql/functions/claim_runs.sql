-- Claim up to p_limit due runs of the named tasks, highest priority first, then oldest.
-- Runs whose max_pending_delay has passed are cancelled instead of claimed. Only the
-- picked rows are examined, so a claim costs O(p_limit) however long the queue is.
-- With p_version (WorkerOptions.version), only tasks that never ran or first ran under that
-- version are claimed, and a task's first claim stamps it with p_version; runs of other
-- versions are stepped over (each one costs an index probe of tasks).
-- With p_singly, one run at a time, each claim in its own subtransaction: what a worker
-- falls back to after a claim failed because of some due run's data (a stored value that
-- breaks one of the statements below, and so every claim of the queue, by every worker).
-- Each round locks the first due run, then claims one run: the locked one, unless a run
-- of higher priority fell due in between. When that claim fails, and the first due run
-- is still the locked one, that run's task is failed for good saying why (fail_task) and
-- the next run is tried; the others are claimed as without p_singly. Taken only after a
-- failed claim: the normal path costs one test of p_singly.
CREATE OR REPLACE FUNCTION @schema.claim_runs(
    p_queue text, p_worker text, p_names text[], p_limit integer, p_lease interval,
    p_version text DEFAULT NULL, p_singly boolean DEFAULT false
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
    v_task uuid;
    v_state text;
    v_message text;
BEGIN
    IF p_singly THEN
        FOR i IN 1 .. p_limit LOOP
            v_id := @schema.first_due_run(p_queue, p_names, p_version);
            EXIT WHEN v_id IS NULL;
            BEGIN
                RETURN QUERY
                SELECT * FROM @schema.claim_runs(p_queue, p_worker, p_names, 1, p_lease,
                    p_version);
            EXCEPTION
                WHEN deadlock_detected OR serialization_failure OR lock_not_available THEN
                    EXIT;  -- no run's fault: the next claim tries again
                WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE,
                        v_message = MESSAGE_TEXT;
                    -- The claim took another run than the one locked: blame nobody.
                    EXIT WHEN @schema.first_due_run(p_queue, p_names, p_version)
                        IS DISTINCT FROM v_id;
                    SELECT r.task_id INTO v_task FROM @schema.runs r WHERE r.run_id = v_id;
                    PERFORM @schema.fail_task(v_task, v_id, jsonb_build_object(
                        'type', 'durable_trio.UnprocessableTask',
                        'message', 'claiming this run failed (' || v_message || ', SQLSTATE '
                            || v_state || ')',
                        'stage', 'claim', 'retryable', false, 'attempt',
                        (SELECT r.attempt FROM @schema.runs r WHERE r.run_id = v_id)));
            END;
        END LOOP;
        RETURN;
    END IF;
    SELECT array_agg(q.run_id) INTO v_picked FROM (
        SELECT c.run_id FROM @schema.runs c
        WHERE c.queue = p_queue AND c.state IN ('pending', 'sleeping')
          AND c.available_at <= v_now AND c.task_name = ANY (p_names)
          AND (p_version IS NULL OR EXISTS (
              SELECT 1 FROM @schema.tasks v WHERE v.task_id = c.task_id
                AND (v.version = p_version OR v.first_started_at IS NULL)))
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
                AND @schema.bounded_add(r.available_at, t.max_pending_delay) < v_now,
                false) AS late,
            -- max_duration counts sleeps too: a task woken (or retried) too late ends here.
            -- A child whose parent already ended unsuccessfully (it was spawned in a
            -- transaction that raced the parent's cancellation) is cancelled here too.
            coalesce(@schema.bounded_add(t.first_started_at, t.max_duration) < v_now, false)
                AS overdue,
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
            first_started_at = coalesce(t.first_started_at, v_now),
            version = CASE WHEN t.first_started_at IS NULL THEN p_version ELSE t.version END
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
