-- The SQL API's emit (docs/sql.md): store the event p_event on p_queue with p_payload (any
-- JSON; NULL means JSON null) and wake every task waiting for it; returns how many woke.
-- Checks the queue and the name as the Python clients do (SQLSTATE 22023, nothing
-- written), so no caller can forge the library's own "$..." events.
CREATE OR REPLACE FUNCTION @schema.emit_event(p_queue text, p_event text, p_payload jsonb)
RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM @schema.check_message(p_queue, p_event, 'event name', p_payload,
        'the payload is');
    RETURN @schema.deliver_event(p_queue, p_event, coalesce(p_payload, 'null'));
END
$$;
