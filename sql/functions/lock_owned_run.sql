-- Fencing: lock the run iff this worker holds a live lease on it. Callers that already
-- read the clock pass it in (each clock_now() call is a query of its own).
-- PL/pgSQL so its plan is cached per session (as a SQL function it was re-planned on
-- every call: ~0.2 ms of every checkpoint, completion and suspension). NO KEY UPDATE is
-- enough: it conflicts with every writer of the row, and spares the key lock.
CREATE OR REPLACE FUNCTION @schema.lock_owned_run(p_run uuid, p_worker text, p_now timestamptz DEFAULT NULL)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_task uuid;
BEGIN
    SELECT r.task_id INTO v_task FROM @schema.runs r
    WHERE r.run_id = p_run AND @schema.holds_lease(
        r.worker_id, r.state, r.lease_expires_at, p_worker, coalesce(p_now, @schema.clock_now()))
    FOR NO KEY UPDATE;
    RETURN v_task;
END
$$;
