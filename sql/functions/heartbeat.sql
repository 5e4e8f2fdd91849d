-- Renew the leases this worker still holds; return those renewed. A run missing from the
-- answer was lost (expired, cancelled, or over its max_duration) and must be abandoned.
CREATE OR REPLACE FUNCTION @schema.heartbeat(p_worker text, p_runs uuid[], p_lease interval)
RETURNS TABLE (run_id uuid, lease_expires_at timestamptz, renewed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_over uuid;
BEGIN
    FOR v_over IN
        SELECT t.task_id FROM @schema.runs r JOIN @schema.tasks t USING (task_id)
        WHERE r.run_id = ANY (p_runs) AND r.worker_id = p_worker AND r.state = 'running'
          AND t.max_duration IS NOT NULL
          AND @schema.bounded_add(t.first_started_at, t.max_duration) < v_now
    LOOP
        PERFORM @schema.cancel_task(v_over, 'max_duration exceeded');
    END LOOP;
    -- A run whose row is locked is inside one of its own fenced transactions
    -- (ctx.transaction, spawn, emit): it is alive and ours, so it is reported as held
    -- rather than waited for; one slow user transaction must not stall every lease.
    RETURN QUERY
    WITH free AS (
        SELECT f.run_id FROM @schema.runs f
        WHERE f.run_id = ANY (p_runs)
          AND @schema.holds_lease(f.worker_id, f.state, f.lease_expires_at, p_worker, v_now)
        FOR NO KEY UPDATE SKIP LOCKED
    ), renewed AS (
        UPDATE @schema.runs r
        SET lease_expires_at = greatest(r.lease_expires_at, v_now + p_lease)
        FROM free WHERE r.run_id = free.run_id
        RETURNING r.run_id, r.lease_expires_at
    )
    SELECT n.run_id, n.lease_expires_at, true FROM renewed n
    UNION ALL
    SELECT b.run_id, b.lease_expires_at, false FROM @schema.runs b
    WHERE b.run_id = ANY (p_runs)
      AND @schema.holds_lease(b.worker_id, b.state, b.lease_expires_at, p_worker, v_now)
      AND NOT EXISTS (SELECT 1 FROM free WHERE free.run_id = b.run_id);
END
$$;
