-- A deadline no longer applies once its task ended, or (a pending delay) started. SQL,
-- immutable: inlined into the sweep's statements.
CREATE OR REPLACE FUNCTION @schema.deadline_void(p_kind text, p_state text, p_started timestamptz)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_state IN ('completed', 'failed', 'cancelled')
        OR (p_kind = 'max_pending_delay' AND p_started IS NOT NULL)
$$;
