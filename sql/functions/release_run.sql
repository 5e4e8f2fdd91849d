-- Graceful shutdown: hand a run back without spending an attempt.
CREATE OR REPLACE FUNCTION @schema.release_run(p_run uuid, p_worker text) RETURNS boolean
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
