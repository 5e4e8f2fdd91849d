-- Runs due for longer than p_threshold whose task name no live worker of their queue has
-- registered: (queue, task_name, how many, since when the oldest is due). Due runs are
-- those a claim would take (pending, or sleeping past their wake time); a backlog that
-- live workers serve is not reported.
CREATE OR REPLACE FUNCTION @schema.unserved_tasks(p_threshold interval)
RETURNS TABLE (queue text, task_name text, runs bigint, oldest_due timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
BEGIN
    RETURN QUERY
    SELECT r.queue, r.task_name, count(*), min(r.available_at)
    FROM @schema.runs r
    WHERE r.state IN ('pending', 'sleeping') AND r.available_at <= v_now - p_threshold
      AND NOT EXISTS (
          SELECT 1 FROM @schema.workers w
          WHERE w.expires_at > v_now AND r.queue = ANY (w.queues)
            AND r.task_name = ANY (w.task_names))
    GROUP BY r.queue, r.task_name
    ORDER BY min(r.available_at);
END
$$;
