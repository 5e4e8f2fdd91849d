-- claim_runs one run at a time, each claim in its own subtransaction: what a worker
-- falls back to after claim_runs failed because of some due run's data (a stored value
-- that breaks one of its statements, and so every claim of the queue, by every worker).
-- Each round locks the first due run, then claims one run: the locked one, unless a
-- run of higher priority fell due in between. When that claim fails, and the first due
-- run is still the locked one, that run's task is failed for good saying why
-- (fail_task) and the next run is tried; the others are claimed as claim_runs would.
-- Called only after a failed claim: the normal path costs nothing.
CREATE OR REPLACE FUNCTION @schema.claim_runs_singly(
    p_queue text, p_worker text, p_names text[], p_limit integer, p_lease interval,
    p_version text DEFAULT NULL
) RETURNS TABLE (run_id uuid, task_id uuid, task_name text, attempt integer,
    params jsonb, headers text, retry text, max_attempts integer, checkpoints text,
    lease_expires_at timestamptz, claimed_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_run uuid;
    v_task uuid;
    v_state text;
    v_message text;
BEGIN
    FOR i IN 1 .. p_limit LOOP
        v_run := @schema.first_due_run(p_queue, p_names, p_version);
        EXIT WHEN v_run IS NULL;
        BEGIN
            RETURN QUERY
            SELECT * FROM @schema.claim_runs(p_queue, p_worker, p_names, 1, p_lease,
                p_version);
        EXCEPTION
            WHEN deadlock_detected OR serialization_failure OR lock_not_available THEN
                EXIT;  -- no run's fault: the next claim tries again
            WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE,
                    v_message = MESSAGE_TEXT;
                -- The claim took another run than the one locked: blame nobody.
                EXIT WHEN @schema.first_due_run(p_queue, p_names, p_version) IS DISTINCT FROM v_run;
                SELECT r.task_id INTO v_task FROM @schema.runs r WHERE r.run_id = v_run;
                PERFORM @schema.fail_task(v_task, v_run, jsonb_build_object(
                    'type', 'durable_trio.UnprocessableTask',
                    'message', 'claiming this run failed (' || v_message || ', SQLSTATE '
                        || v_state || ')',
                    'stage', 'claim', 'retryable', false, 'attempt',
                    (SELECT r.attempt FROM @schema.runs r WHERE r.run_id = v_run)));
        END;
    END LOOP;
END
$$;
