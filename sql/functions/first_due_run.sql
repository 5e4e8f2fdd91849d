-- The run claim_runs would take first from p_queue, locked by this transaction (rows
-- other claimants hold are skipped, as claim_runs skips them; with p_version, only runs
-- that version may claim, as claim_runs). For claim_runs(..., p_singly => true).
CREATE OR REPLACE FUNCTION @schema.first_due_run(
    p_queue text, p_names text[], p_version text
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_run uuid;
BEGIN
    SELECT c.run_id INTO v_run FROM @schema.runs c
    WHERE c.queue = p_queue AND c.state IN ('pending', 'sleeping')
      AND c.available_at <= @schema.clock_now() AND c.task_name = ANY (p_names)
      AND (p_version IS NULL OR EXISTS (
          SELECT 1 FROM @schema.tasks v WHERE v.task_id = c.task_id
            AND (v.version = p_version OR v.first_started_at IS NULL)))
    ORDER BY c.priority DESC, c.available_at, c.run_id
    LIMIT 1
    FOR UPDATE SKIP LOCKED;
    RETURN v_run;
END
$$;
