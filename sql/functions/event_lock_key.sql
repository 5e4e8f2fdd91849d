-- The transaction-scoped advisory lock key that emit_event and await_event both take for
-- (schema, queue, event), so whichever commits second sees the other (invariant 4: no
-- lost wake-ups).
CREATE OR REPLACE FUNCTION @schema.event_lock_key(p_queue text, p_event text) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT hashtextextended(@schema_literal || '.' || p_queue || '/' || p_event, 0)
$$;
