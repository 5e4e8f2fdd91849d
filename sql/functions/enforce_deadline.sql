-- One due deadline row, locked by the caller: cancel its task (1), or re-time or drop the
-- row (0). The task's runs are locked first (the order every function uses), so a claim
-- in progress has either committed its start, which is then seen, or waits for this.
CREATE OR REPLACE FUNCTION @schema.enforce_deadline(p_task uuid, p_kind text, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    t record;
    v_due timestamptz;
BEGIN
    PERFORM 1 FROM @schema.runs WHERE task_id = p_task
        AND state IN ('pending', 'running', 'sleeping') ORDER BY run_id FOR UPDATE;
    SELECT tk.state, tk.first_started_at, tk.max_pending_delay, tk.max_duration,
        (SELECT r.available_at FROM @schema.runs r
         WHERE r.task_id = tk.task_id AND r.attempt = 1) AS available_at
    INTO t FROM @schema.tasks tk WHERE tk.task_id = p_task;
    v_due := CASE p_kind
        WHEN 'max_pending_delay' THEN @schema.bounded_add(t.available_at, t.max_pending_delay)
        ELSE @schema.bounded_add(t.first_started_at, t.max_duration) END;
    IF @schema.deadline_void(p_kind, t.state, t.first_started_at) THEN
        DELETE FROM @schema.deadlines WHERE task_id = p_task AND kind = p_kind;
        RETURN 0;
    END IF;
    IF v_due >= p_now THEN  -- claim_runs and heartbeat cancel only once it is passed
        UPDATE @schema.deadlines SET due_at = v_due WHERE task_id = p_task AND kind = p_kind;
        RETURN 0;
    END IF;
    DELETE FROM @schema.deadlines WHERE task_id = p_task AND kind = p_kind;
    RETURN least(@schema.cancel_task(p_task, p_kind || ' exceeded'), 1);
END
$$;
