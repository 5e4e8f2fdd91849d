-- durable_trio schema, version 3: a fast path for a run's last write.
--
-- A task that returns after its last step leaves one checkpoint and its completion for
-- the writer; with one task at a time (and whenever one run finishes alone) record_runs
-- took that pair through its JSON batch and five-part statement. Scalar parameters and
-- plain statements: c=1 one-step drains, A/B in one server, 757-791 against 608-635
-- tasks/s. Same fence, lock and effects as record_runs given those writes: the checkpoint
-- (if any) is inserted unless already there, the run and the task are completed with
-- p_result, and a parent is told (announce_end). False, with nothing written, if the
-- worker does not own the run (under that claim, when p_claimed_at is given).
CREATE FUNCTION @schema.finish_run(
    p_worker text, p_run uuid, p_claimed_at timestamptz, p_name text, p_value jsonb,
    p_result jsonb
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_task uuid;
    v_parent uuid;
BEGIN
    SELECT r.task_id INTO v_task FROM @schema.runs r
    WHERE r.run_id = p_run AND r.worker_id = p_worker AND r.state = 'running'
      AND r.lease_expires_at > v_now
      AND (p_claimed_at IS NULL OR r.claimed_at = p_claimed_at)
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF p_name IS NOT NULL THEN
        INSERT INTO @schema.checkpoints (task_id, name, value, run_id, created_at)
        VALUES (v_task, p_name, p_value, p_run, v_now)
        ON CONFLICT (task_id, name) DO NOTHING;
    END IF;
    UPDATE @schema.runs SET state = 'completed', finished_at = v_now, lease_expires_at = NULL
    WHERE run_id = p_run;
    UPDATE @schema.tasks SET state = 'completed', result = p_result, finished_at = v_now
    WHERE task_id = v_task RETURNING parent_task_id INTO v_parent;
    IF v_parent IS NOT NULL THEN
        PERFORM @schema.announce_end(v_task);
    END IF;
    RETURN true;
END
$$;
