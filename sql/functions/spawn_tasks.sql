-- Writes tasks and their first runs: the clients' spawn_many directly, the SQL API's
-- spawn (and so schedules) through spawn_task. A single spawn from a client (a child's
-- too) writes the same rows with the plain statement spawn_one in sql/queries.sql, and
-- comes here only when its key named a task (spawn_one_existing): keep the two alike
-- (tests/integration/test_spawn.py compares them). Tasks of one name with shared settings; per item its ids, its params (JSON text) and its idempotency key
-- (NULL: none). An item whose key names a task already on the queue writes nothing and
-- reports that task (created false). Items of one call sharing a key: the first of them
-- (in array order) is spawned and the later ones report it, created false. One NOTIFY
-- per call, when anything was created. p_parent is every task's parent (NULL: none).
CREATE OR REPLACE FUNCTION @schema.spawn_tasks(
    p_tasks uuid[], p_runs uuid[], p_params text[], p_keys text[], p_queue text,
    p_name text, p_headers jsonb, p_retry jsonb, p_max_attempts integer,
    p_priority integer, p_delay interval, p_start_at timestamptz,
    p_max_pending_delay interval, p_max_duration interval, p_parent uuid
) RETURNS TABLE (task_id uuid, run_id uuid, attempt integer, created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_root uuid;
    v_made integer;
BEGIN
    IF p_parent IS NOT NULL THEN
        SELECT coalesce(t.root_task_id, t.task_id) INTO v_root
        FROM @schema.tasks t WHERE t.task_id = p_parent;
    END IF;
    -- ORDER BY: rows are inserted in array order, so the first item of a shared key wins.
    WITH made AS (
        INSERT INTO @schema.tasks AS t (task_id, queue, task_name, params, headers, retry,
            max_attempts, priority, max_pending_delay, max_duration, idempotency_key,
            parent_task_id, root_task_id, state, attempts, last_run_id, created_at)
        SELECT u.t, p_queue, p_name, u.p::jsonb, p_headers, p_retry, p_max_attempts,
            p_priority, p_max_pending_delay, p_max_duration, u.k, p_parent,
            coalesce(v_root, u.t), 'pending', 1, u.r, v_now
        FROM unnest(p_tasks, p_runs, p_params, p_keys) WITH ORDINALITY AS u(t, r, p, k, o)
        ORDER BY u.o
        ON CONFLICT (queue, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING t.task_id, t.last_run_id
    ), started AS (
        INSERT INTO @schema.runs (run_id, task_id, queue, task_name, priority, attempt,
            state, available_at, created_at)
        SELECT m.last_run_id, m.task_id, p_queue, p_name, p_priority, 1, 'pending',
            coalesce(p_start_at, v_now + coalesce(p_delay, '0 seconds')), v_now
        FROM made m
        RETURNING 1
    )
    SELECT count(*) INTO v_made FROM started;
    IF v_made > 0 THEN
        PERFORM @schema.notify_queue(p_queue);
    END IF;
    IF v_made = cardinality(p_tasks) THEN
        RETURN QUERY SELECT u.t, u.r, 1, true FROM unnest(p_tasks, p_runs) AS u(t, r);
        RETURN;
    END IF;
    -- A later statement: it sees a task a concurrent spawn committed with the same key.
    RETURN QUERY
    SELECT coalesce(x.task_id, u.t), coalesce(x.last_run_id, u.r), coalesce(x.attempts, 1),
        x.task_id IS NULL OR x.task_id = u.t
    FROM unnest(p_tasks, p_runs, p_keys) WITH ORDINALITY AS u(t, r, k, o)
    LEFT JOIN @schema.tasks x ON x.queue = p_queue AND x.idempotency_key = u.k
    ORDER BY u.o;
END
$$;
