-- Tasks reached a terminal state: wake the clients waiting for their results
-- (`wait_result` LISTENs on durable_trio_end). One notification per 200 tasks, whose
-- payload is "<schema> <task_id>,<task_id>,..." (well under the 8000-byte limit), so a
-- worker's batch of completions costs one or a few queue entries, not one per task.
CREATE OR REPLACE FUNCTION @schema.notify_end(p_tasks uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('durable_trio_end',
        @schema_literal || ' ' || string_agg(u.id::text, ',' ORDER BY u.n))
    FROM unnest(p_tasks) WITH ORDINALITY AS u(id, n)
    GROUP BY (u.n - 1) / 200;
END
$$;
