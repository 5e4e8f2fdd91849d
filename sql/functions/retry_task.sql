-- Give a failed or cancelled task a new attempt (Durable.retry). Returns one row:
--   ('missing', ...)       no such task
--   ('refused', state)     the task is not failed or cancelled: nothing written
--   ('parent', state)      its parent failed or was cancelled (a claim would cancel the
--                          retried child at once): retry the parent instead
--   ('max_attempts', ...)  p_max_attempts leaves no room for another attempt
--   ('retried', 'pending', run, attempt, revived)
--
-- The new run is pending now; the task keeps its checkpoints (a replay resumes after the
-- last one) unless p_from_scratch, which deletes them and the task's wait. Its
-- max_duration counts from the new start (first_started_at is cleared). Without
-- p_from_scratch the descendants that were cancelled because this task ended (reason
-- "parent ...") get a new attempt too, with their checkpoints: a replayed ctx.spawn
-- returns the same child and ctx.join waits for its new outcome. Each revived task's
-- internal end event is deleted, so a parent that has not joined yet waits for the new
-- end; a parent that already joined keeps the outcome it checkpointed.
CREATE OR REPLACE FUNCTION @schema.retry_task(
    p_task uuid, p_run uuid, p_max_attempts integer, p_from_scratch boolean
) RETURNS TABLE (outcome text, state text, run_id uuid, attempt integer, revived integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    t record;
    v_parent text;
    v_ids uuid[];
    d record;
BEGIN
    SELECT * INTO t FROM @schema.tasks tk WHERE tk.task_id = p_task FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'missing'::text, NULL::text, NULL::uuid, NULL::integer, 0;
        RETURN;
    END IF;
    IF t.state NOT IN ('failed', 'cancelled') THEN
        RETURN QUERY SELECT 'refused'::text, t.state, NULL::uuid, NULL::integer, 0;
        RETURN;
    END IF;
    IF t.parent_task_id IS NOT NULL THEN
        SELECT p.state INTO v_parent FROM @schema.tasks p WHERE p.task_id = t.parent_task_id;
        IF v_parent IN ('failed', 'cancelled') THEN
            RETURN QUERY SELECT 'parent'::text, v_parent, NULL::uuid, NULL::integer, 0;
            RETURN;
        END IF;
    END IF;
    IF p_max_attempts IS NOT NULL AND p_max_attempts <= t.attempts THEN
        RETURN QUERY SELECT 'max_attempts'::text, t.state, NULL::uuid, t.attempts, 0;
        RETURN;
    END IF;

    IF p_from_scratch THEN
        DELETE FROM @schema.checkpoints WHERE task_id = p_task;
        DELETE FROM @schema.waits WHERE task_id = p_task;
        v_ids := ARRAY[p_task];
    ELSE
        -- This task and, through cancelled links only, what was cancelled with it.
        WITH RECURSIVE tree AS (
            SELECT p_task AS task_id
            UNION
            SELECT c.task_id FROM @schema.tasks c JOIN tree ON c.parent_task_id = tree.task_id
            WHERE c.state = 'cancelled' AND c.cancel_reason LIKE 'parent %'
        )
        SELECT array_agg(tree.task_id ORDER BY tree.task_id) INTO v_ids FROM tree;
        PERFORM 1 FROM @schema.tasks tk WHERE tk.task_id = ANY (v_ids)
            ORDER BY tk.task_id FOR UPDATE;
    END IF;

    FOR d IN
        SELECT tk.task_id, tk.queue, tk.task_name, tk.priority, tk.attempts, tk.max_attempts
        FROM @schema.tasks tk
        WHERE tk.task_id = ANY (v_ids) AND tk.state IN ('failed', 'cancelled')
    LOOP
        INSERT INTO @schema.runs (run_id, task_id, queue, task_name, priority, attempt,
            state, available_at, wake_reason, created_at)
        VALUES (CASE WHEN d.task_id = p_task THEN p_run ELSE gen_random_uuid() END,
            d.task_id, d.queue, d.task_name, d.priority, d.attempts + 1, 'pending', v_now,
            'retry', v_now);
        UPDATE @schema.tasks tk SET state = 'pending', attempts = d.attempts + 1,
            max_attempts = CASE WHEN d.task_id = p_task AND p_max_attempts IS NOT NULL
                THEN p_max_attempts ELSE greatest(d.max_attempts, d.attempts + 1) END,
            last_run_id = r.run_id, first_started_at = NULL, finished_at = NULL,
            cancel_reason = NULL
        FROM @schema.runs r
        WHERE tk.task_id = d.task_id AND r.task_id = d.task_id AND r.attempt = d.attempts + 1;
        DELETE FROM @schema.deadlines dl WHERE dl.task_id = d.task_id;
        DELETE FROM @schema.events e
        WHERE e.queue = d.queue AND e.event_name = '$task:' || d.task_id::text;
        PERFORM @schema.notify_queue(d.queue);
    END LOOP;
    RETURN QUERY SELECT 'retried'::text, 'pending'::text, p_run, t.attempts + 1,
        array_length(v_ids, 1) - 1;
END
$$;
