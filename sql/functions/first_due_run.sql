-- The run claim_runs would take first from p_queue, locked by this transaction (rows
-- other claimants hold are skipped, as claim_runs skips them). For claim_runs_singly.
CREATE OR REPLACE FUNCTION @schema.first_due_run(p_queue text, p_names text[])
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_run uuid;
BEGIN
    SELECT c.run_id INTO v_run FROM @schema.runs c
    WHERE c.queue = p_queue AND c.state IN ('pending', 'sleeping')
      AND c.available_at <= @schema.clock_now() AND c.task_name = ANY (p_names)
    ORDER BY c.priority DESC, c.available_at, c.run_id
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    RETURN v_run;
END
$$;
