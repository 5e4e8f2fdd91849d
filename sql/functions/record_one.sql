-- The writer's two commonest batches with scalar parameters: one checkpoint, or one run's
-- completion after at most one checkpoint (record_runs takes either through a JSON array
-- and a five-part statement; this costs 0.03-0.07 ms of server time per checkpoint and
-- 0.14 ms per checkpoint and completion, against ~0.48 ms through record_runs).
--
-- Same fence, lock and effects as record_runs given those writes: nothing is written, and
-- false returned, unless p_worker holds a live lease on the run (under the claim made at
-- p_claimed_at, when given). Then the checkpoint p_name (if not NULL) is inserted unless
-- already stored, and with p_complete the run and the task are completed with p_result
-- and a parent is told (announce_end).
CREATE OR REPLACE FUNCTION @schema.record_one(
    p_worker text, p_run uuid, p_claimed_at timestamptz, p_name text, p_value jsonb,
    p_complete boolean, p_result jsonb
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_task uuid;
    v_parent uuid;
BEGIN
    -- lock_owned_run's fence, plus the claim check record_runs also makes.
    SELECT r.task_id INTO v_task FROM @schema.runs r
    WHERE r.run_id = p_run
      AND @schema.holds_lease(r.worker_id, r.state, r.lease_expires_at, p_worker, v_now)
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
    IF p_complete THEN
        UPDATE @schema.runs SET state = 'completed', finished_at = v_now,
            lease_expires_at = NULL
        WHERE run_id = p_run;
        UPDATE @schema.tasks SET state = 'completed', result = p_result, finished_at = v_now
        WHERE task_id = v_task RETURNING parent_task_id INTO v_parent;
        IF v_parent IS NOT NULL THEN
            PERFORM @schema.announce_end(v_task);
        ELSE
            PERFORM @schema.notify_end(ARRAY[v_task]);  -- announce_end's part for a root
        END IF;
    END IF;
    RETURN true;
END
$$;
