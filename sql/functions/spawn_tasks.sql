-- Spawn many top-level tasks of one name with shared options in one statement
-- (spawn_many). Only ids and params vary per task. With an idempotency key every row
-- names the same task: the first row is spawned as spawn_task would (or the existing
-- task is found) and every row reports that task.
CREATE OR REPLACE FUNCTION @schema.spawn_tasks(
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
