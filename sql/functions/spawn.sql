-- The SQL API's spawn (docs/sql.md): start a task from any client that speaks SQL.
-- Checks its input as the Python clients do and writes nothing when it refuses (SQLSTATE
-- 22023, see refuse and spawn_settings). p_options is a JSON object with any of:
-- max_attempts, retry {kind, base, factor, max_delay, jitter}, headers, priority, delay,
-- start_at, idempotency_key, cancellation {max_pending_delay, max_duration}, task_id,
-- run_id. Durations are seconds. Ids not given are made here (UUIDv7).
CREATE OR REPLACE FUNCTION @schema.spawn(
    p_queue text, p_task_name text, p_params jsonb DEFAULT 'null',
    p_options jsonb DEFAULT '{}'
) RETURNS TABLE (task_id uuid, run_id uuid, attempt integer)
LANGUAGE plpgsql AS $$
DECLARE
    s record;
    v_constraint text;
BEGIN
    SELECT * INTO s FROM @schema.spawn_settings(p_queue, p_task_name, p_params, p_options);
    IF NOT (coalesce(p_options, '{}') ?| ARRAY['task_id', 'run_id']) THEN
        RETURN QUERY
        SELECT r.task_id, r.run_id, r.attempt
        FROM @schema.spawn_task(s.task_id, s.run_id, p_queue, p_task_name,
            coalesce(p_params, 'null'), s.headers, s.retry, s.max_attempts, s.priority,
            s.delay, s.start_at, s.idempotency_key, s.max_pending_delay, s.max_duration,
            NULL) r;
        RETURN;
    END IF;
    -- The caller's own ids may be taken: refused as bad input (a subtransaction, only
    -- for spawns that give ids), not a unique_violation.
    BEGIN
        RETURN QUERY
        SELECT r.task_id, r.run_id, r.attempt
        FROM @schema.spawn_task(s.task_id, s.run_id, p_queue, p_task_name,
            coalesce(p_params, 'null'), s.headers, s.retry, s.max_attempts, s.priority,
            s.delay, s.start_at, s.idempotency_key, s.max_pending_delay, s.max_duration,
            NULL) r;
    EXCEPTION WHEN unique_violation THEN
        GET STACKED DIAGNOSTICS v_constraint = CONSTRAINT_NAME;
        IF v_constraint = 'tasks_pkey' THEN
            PERFORM @schema.refuse(format('task_id %s is taken by another task: give a new '
                'id, or an idempotency_key to get the first task back', s.task_id));
        ELSIF v_constraint = 'runs_pkey' THEN
            PERFORM @schema.refuse(format('run_id %s is taken by another run: give a new id',
                s.run_id));
        END IF;
        RAISE;
    END;
END
$$;
