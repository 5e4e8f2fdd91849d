-- Store an event and wake every run waiting for it. Serialised per (queue, event) with an
-- advisory lock shared with await_event, so an emit racing a wait never loses the wake-up.
-- Names are not checked here: the library's own ("$task:<id>", a child's end) go through
-- it, and the clients check users' names first (emit_event is the SQL API's checked door).
CREATE OR REPLACE FUNCTION @schema.deliver_event(p_queue text, p_event text, p_payload jsonb)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_woken integer;
    v_queues text[];
    v_queue text;
BEGIN
    PERFORM pg_advisory_xact_lock(@schema.event_lock_key(p_queue, p_event));
    INSERT INTO @schema.events (queue, event_name, payload, emitted_at)
    VALUES (p_queue, p_event, p_payload, v_now)
    ON CONFLICT (queue, event_name)
    DO UPDATE SET payload = EXCLUDED.payload, emitted_at = EXCLUDED.emitted_at;

    WITH gone AS (
        DELETE FROM @schema.waits
        WHERE queue = p_queue AND event_name = p_event
        RETURNING run_id, task_id, step_name
    ), saved AS (
        INSERT INTO @schema.checkpoints (task_id, name, value, run_id, created_at)
        SELECT task_id, step_name, jsonb_build_object('payload', p_payload), run_id, v_now
        FROM gone
        ON CONFLICT (task_id, name) DO NOTHING
    ), woke AS (
        UPDATE @schema.runs r SET state = 'pending', available_at = v_now,
            wake_reason = 'event'
        FROM gone WHERE r.run_id = gone.run_id AND r.state = 'sleeping'
        RETURNING r.task_id, r.queue
    ), tasks_woke AS (
        UPDATE @schema.tasks t SET state = 'pending'
        FROM woke WHERE t.task_id = woke.task_id AND t.state = 'sleeping'
    )
    -- The waiter's queue, which for a join across queues is not the event's queue.
    SELECT count(*), coalesce(array_agg(DISTINCT woke.queue), '{}') INTO v_woken, v_queues
    FROM woke;
    FOREACH v_queue IN ARRAY v_queues LOOP
        PERFORM @schema.notify_queue(v_queue);
    END LOOP;
    RETURN v_woken;
END
$$;
