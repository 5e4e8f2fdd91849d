-- Retention: remove one batch of old finished work, so tables do not grow for ever.
-- - tasks finished (completed, failed, cancelled) before p_finished_before, with their
--   runs, checkpoints and waits, unless their parent is still unfinished (it may join
--   them yet); oldest first, at most p_batch;
-- - events emitted before p_events_before, at most p_batch (a task that waits for one
--   later no longer finds it);
-- - the end events of children ("$task:<id>") whose parent has finished or is gone, at
--   most p_batch, whatever their age (a parent joins a child only while unfinished).
-- A NULL cutoff skips that kind. Rows are taken with SKIP LOCKED and no claimable run is
-- touched, so a cleanup never makes a claim or a write wait. Callers repeat it until a
-- batch removes less than p_batch of each kind (Durable.cleanup does).
--
-- Tasks are found in task id order, which is creation order (UUIDv7): a task created
-- after the cut-off cannot have finished before it, so the walk stops at the first id
-- of the cut-off's millisecond instead of reading every newer task (the last batch of
-- each cleanup would otherwise walk the whole table). An id made on a clock running
-- ahead only waits for a later cleanup. The parent check is a probe per candidate with
-- a parent, never a join: planned on poor statistics, the anti-join read every task.
CREATE OR REPLACE FUNCTION @schema.cleanup(
    p_finished_before timestamptz, p_events_before timestamptz, p_batch integer
) RETURNS TABLE (tasks integer, runs integer, checkpoints integer, events integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_tasks uuid[];
    v_runs integer := 0;
    v_checkpoints integer := 0;
    v_events integer := 0;
    v_ended integer := 0;
    v_last uuid;
BEGIN
    IF p_finished_before IS NOT NULL THEN
        -- The smallest UUIDv7 of the millisecond after the cut-off (ids below it were
        -- made up to then), its time kept within the 48 bits a UUIDv7 has for it.
        v_last := (SELECT (substr(h, 1, 8) || '-' || substr(h, 9, 4)
                           || '-0000-0000-000000000000')::uuid
                   FROM (SELECT lpad(to_hex(greatest(0, least(
                       floor(extract(epoch FROM p_finished_before) * 1000)::bigint + 1,
                       281474976710655))), 12, '0') AS h) x);
        SELECT coalesce(array_agg(victim.task_id), '{}') INTO v_tasks FROM (
            SELECT t.task_id FROM @schema.tasks t
            WHERE t.task_id < v_last AND t.finished_at < p_finished_before
              AND t.state IN ('completed', 'failed', 'cancelled')
              AND (t.parent_task_id IS NULL OR NOT EXISTS (
                  SELECT 1 FROM @schema.tasks p WHERE p.task_id = t.parent_task_id
                    AND p.state NOT IN ('completed', 'failed', 'cancelled')))
            ORDER BY t.task_id LIMIT p_batch
            FOR UPDATE OF t SKIP LOCKED
        ) victim;
        WITH gone AS (DELETE FROM @schema.runs WHERE task_id = ANY (v_tasks) RETURNING 1)
        SELECT count(*) INTO v_runs FROM gone;
        WITH gone AS (DELETE FROM @schema.checkpoints WHERE task_id = ANY (v_tasks) RETURNING 1)
        SELECT count(*) INTO v_checkpoints FROM gone;
        DELETE FROM @schema.tasks WHERE task_id = ANY (v_tasks);  -- waits, deadlines cascade
    ELSE
        v_tasks := '{}';
    END IF;
    IF p_events_before IS NOT NULL THEN
        WITH old AS (
            SELECT e.queue, e.event_name FROM @schema.events e
            WHERE e.emitted_at < p_events_before AND left(e.event_name, 6) <> '$task:'
            LIMIT p_batch FOR UPDATE SKIP LOCKED
        ), gone AS (
            DELETE FROM @schema.events e USING old
            WHERE e.queue = old.queue AND e.event_name = old.event_name RETURNING 1
        )
        SELECT count(*) INTO v_events FROM gone;
    END IF;
    WITH ended AS (
        SELECT e.queue, e.event_name FROM @schema.events e
        WHERE left(e.event_name, 6) = '$task:'
          AND NOT EXISTS (
              SELECT 1 FROM @schema.tasks c JOIN @schema.tasks p ON p.task_id = c.parent_task_id
              WHERE c.task_id = @schema.child_of_event(e.event_name)
                AND p.state NOT IN ('completed', 'failed', 'cancelled'))
        LIMIT p_batch FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM @schema.events e USING ended
        WHERE e.queue = ended.queue AND e.event_name = ended.event_name RETURNING 1
    )
    SELECT count(*) INTO v_ended FROM gone;
    RETURN QUERY SELECT cardinality(v_tasks), v_runs, v_checkpoints, v_events + v_ended;
END
$$;
