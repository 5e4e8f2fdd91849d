CREATE OR REPLACE FUNCTION @schema.spawn_task(
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
