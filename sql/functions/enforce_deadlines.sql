-- Cancel up to p_limit tasks whose deadline has passed, as claim_runs and heartbeat do
-- (same reasons). First, in one statement, forget every due deadline that no longer
-- applies (the task ended, or started before its pending delay ran out): a worker doing
-- thousands of tasks with a policy leaves that many rows falling due. A deadline found
-- early (the pending delay of a spawn made available later than created) is re-timed.
-- Each task is judged again under its runs' locks (a claim may be starting it), and each
-- cancellation is a subtransaction: a deadlock or a lock held past lock_timeout (say by
-- a long ctx.transaction) skips that task until the next sweep instead of failing the
-- sweep; a task whose own data breaks its deadline's statements is failed for good
-- (fail_deadline_task). Workers racing here skip each other's rows. Returns how many
-- were cancelled.
CREATE OR REPLACE FUNCTION @schema.enforce_deadlines(p_limit integer) RETURNS integer
LANGUAGE plpgsql
SET lock_timeout = '1s'
AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_cancelled integer := 0;
    d record;
BEGIN
    DELETE FROM @schema.deadlines x
    WHERE (x.task_id, x.kind) IN (
        SELECT dl.task_id, dl.kind FROM @schema.deadlines dl
        JOIN @schema.tasks t ON t.task_id = dl.task_id
        WHERE dl.due_at <= v_now
          AND @schema.deadline_void(dl.kind, t.state, t.first_started_at)
        FOR UPDATE OF dl SKIP LOCKED);
    FOR d IN
        SELECT dl.task_id, dl.kind FROM @schema.deadlines dl WHERE dl.due_at <= v_now
        ORDER BY dl.due_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    LOOP
        BEGIN
            v_cancelled := v_cancelled + @schema.enforce_deadline(d.task_id, d.kind, v_now);
        EXCEPTION
            WHEN deadlock_detected OR lock_not_available THEN
                NULL;  -- the row stays due: the next sweep tries again
            WHEN OTHERS THEN
                -- The task's own data breaks its deadline (say, a time out of range):
                -- so would every sweep. Fail it for good, saying why.
                PERFORM @schema.fail_deadline_task(d.task_id, d.kind, SQLERRM, SQLSTATE);
        END;
    END LOOP;
    RETURN v_cancelled;
END
$$;
