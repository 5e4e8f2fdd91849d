-- Suspend a running attempt until p_wake_at (a durable sleep); the slot is freed.
CREATE OR REPLACE FUNCTION @schema.suspend_run(p_run uuid, p_worker text, p_wake_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_task uuid := @schema.lock_owned_run(p_run, p_worker);
BEGIN
    IF v_task IS NULL THEN
        RETURN false;
    END IF;
    UPDATE @schema.runs SET state = 'sleeping', available_at = p_wake_at, worker_id = NULL,
        lease_expires_at = NULL, wake_reason = 'timer'
    WHERE run_id = p_run;
    UPDATE @schema.tasks SET state = 'sleeping' WHERE task_id = v_task;
    RETURN true;
END
$$;
