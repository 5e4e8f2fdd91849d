-- Await an event (or a child's end). Returns one of:
--   ('fenced', NULL)      this worker lost the run: write nothing more
--   ('event', payload)    delivered now (checkpointed under p_step)
--   ('timeout', NULL)     the timeout passed first (checkpointed under p_step)
--   ('suspended', NULL)   the run now sleeps until the event or the timeout
CREATE OR REPLACE FUNCTION @schema.await_event(
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
    PERFORM pg_advisory_xact_lock(@schema.event_lock_key(p_queue, p_event));
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
