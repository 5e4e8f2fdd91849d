-- enforce_deadlines met a deadline its statements fail on (p_message, p_state): fail the
-- task for good saying why (fail_task), in a subtransaction of its own so that, should
-- even that fail, the sweep goes on (the row stays due and is tried again next sweep).
CREATE OR REPLACE FUNCTION @schema.fail_deadline_task(
    p_task uuid, p_kind text, p_message text, p_state text
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM @schema.fail_task(p_task, NULL, jsonb_build_object(
        'type', 'durable_trio.UnprocessableTask',
        'message', 'its ' || p_kind || ' deadline could not be enforced (' || p_message
            || ', SQLSTATE ' || p_state || ')',
        'stage', 'deadline', 'retryable', false));
    DELETE FROM @schema.deadlines WHERE task_id = p_task AND kind = p_kind;
EXCEPTION WHEN OTHERS THEN
    NULL;
END
$$;
