-- A task reached a terminal state: tell a parent that may be joining it, and the clients
-- waiting for its result (notify_end).
CREATE OR REPLACE FUNCTION @schema.announce_end(p_task uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    SELECT queue, parent_task_id, state, result, error, cancel_reason INTO t
    FROM @schema.tasks WHERE task_id = p_task;
    IF t.parent_task_id IS NOT NULL THEN
        PERFORM @schema.deliver_event(t.queue, '$task:' || p_task::text, jsonb_build_object(
            'state', t.state, 'result', t.result, 'error', t.error,
            'reason', t.cancel_reason));
    END IF;
    PERFORM @schema.notify_end(ARRAY[p_task]);
END
$$;
