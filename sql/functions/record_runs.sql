-- Record outcomes for many runs of one worker in one transaction (the worker batches
-- them: one round trip and one commit for every run that finished a step or the task
-- meanwhile). Checkpoints are written first, in the order given, then completions. A run
-- the worker no longer owns (lease expired, cancelled, reclaimed) gets nothing written;
-- the answer lists the runs that were owned.
-- p_writes is a JSON array in write order: {"run_id", "name", "value"} for a checkpoint,
-- {"run_id", "value"} (no name) for a completion with its result, each optionally with the
-- "claimed_at" of the claim it was made under. One JSON value rather than parallel arrays:
-- the client builds it with string joins, not per-element adapters.
CREATE OR REPLACE FUNCTION @schema.record_runs(p_worker text, p_writes jsonb) RETURNS uuid[]
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_owned uuid[];
    v_ended uuid[];
    v_roots uuid[];
    v_id uuid;
BEGIN
    -- One statement (one executor start); the fence locks in run_id order, as cancel_task
    -- does, so concurrent writers never deadlock.
    WITH w AS MATERIALIZED (
        -- "->" keeps a JSON null a jsonb null (jsonb_to_recordset would make it SQL NULL).
        SELECT (e.item ->> 'run_id')::uuid AS run_id, e.item ->> 'name' AS name,
            e.item -> 'value' AS value, (e.item ->> 'claimed_at')::timestamptz AS claimed_at,
            e.ord
        FROM jsonb_array_elements(p_writes) WITH ORDINALITY AS e(item, ord)
    ), owned AS MATERIALIZED (
        SELECT r.run_id, r.task_id FROM @schema.runs r
        WHERE r.run_id IN (SELECT w.run_id FROM w)
          AND @schema.holds_lease(r.worker_id, r.state, r.lease_expires_at, p_worker, v_now)
          -- Made under this claim: a run that slept and was claimed again by the same
          -- worker must not take a late write queued by the earlier claim.
          AND NOT EXISTS (SELECT 1 FROM w WHERE w.run_id = r.run_id
                          AND w.claimed_at IS DISTINCT FROM r.claimed_at
                          AND w.claimed_at IS NOT NULL)
        ORDER BY r.run_id
        FOR NO KEY UPDATE OF r
    ), saved AS (
        INSERT INTO @schema.checkpoints (task_id, name, value, run_id, created_at)
        SELECT o.task_id, w.name, w.value, w.run_id, v_now
        FROM w JOIN owned o ON o.run_id = w.run_id
        WHERE w.name IS NOT NULL
        ORDER BY w.ord
        ON CONFLICT (task_id, name) DO NOTHING
    ), done AS (
        UPDATE @schema.runs r SET state = 'completed', finished_at = v_now,
            lease_expires_at = NULL
        FROM w JOIN owned o ON o.run_id = w.run_id
        WHERE w.name IS NULL AND r.run_id = w.run_id
        RETURNING r.task_id, w.value AS result
    ), ended AS (
        UPDATE @schema.tasks t SET state = 'completed', result = done.result,
            finished_at = v_now
        FROM done WHERE t.task_id = done.task_id
        RETURNING t.task_id, t.parent_task_id
    )
    SELECT (SELECT coalesce(array_agg(o.run_id), '{}') FROM owned o),
        (SELECT array_agg(e.task_id ORDER BY e.task_id) FROM ended e
         WHERE e.parent_task_id IS NOT NULL),
        (SELECT array_agg(e.task_id) FROM ended e WHERE e.parent_task_id IS NULL)
    INTO v_owned, v_ended, v_roots;
    FOREACH v_id IN ARRAY coalesce(v_ended, '{}') LOOP
        PERFORM @schema.announce_end(v_id);
    END LOOP;
    -- Root tasks need no event, only their waiting clients told: one notification.
    PERFORM @schema.notify_end(coalesce(v_roots, '{}'));
    RETURN v_owned;
END
$$;
