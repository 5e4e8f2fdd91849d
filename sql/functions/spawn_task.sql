-- One spawn (see spawn_tasks, which writes it): the scalar form the SQL API's spawn
-- calls (schedules fire through spawn). created is false when p_idempotency_key named an existing task.
-- PL/pgSQL: a SQL function around spawn_tasks would be planned anew on every call.
CREATE OR REPLACE FUNCTION @schema.spawn_task(
    p_task uuid, p_run uuid, p_queue text, p_name text, p_params jsonb, p_headers jsonb,
    p_retry jsonb, p_max_attempts integer, p_priority integer, p_delay interval,
    p_start_at timestamptz, p_idempotency_key text, p_max_pending_delay interval,
    p_max_duration interval, p_parent uuid
) RETURNS TABLE (task_id uuid, run_id uuid, attempt integer, created boolean)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM @schema.spawn_tasks(ARRAY[p_task], ARRAY[p_run],
        ARRAY[p_params::text], ARRAY[p_idempotency_key], p_queue, p_name, p_headers, p_retry,
        p_max_attempts, p_priority, p_delay, p_start_at, p_max_pending_delay, p_max_duration,
        p_parent);
END
$$;
