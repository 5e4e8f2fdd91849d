-- An attempt failed. With p_worker it is the worker reporting its own failure (fenced by
-- its lease); with p_worker NULL it is the reaper failing a run whose lease expired.
-- p_retry asks for another attempt after p_delay; the guard below never lets attempts
-- exceed max_attempts. Returns the task's new state, or NULL if fenced out.
CREATE OR REPLACE FUNCTION @schema.fail_run(
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
