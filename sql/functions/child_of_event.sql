-- The child task whose end an internal event "$task:<id>" announces (announce_end), or
-- NULL for any other name: never a cast error, whatever a row holds.
CREATE OR REPLACE FUNCTION @schema.child_of_event(p_event text) RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_event ~ '^\$task:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
        THEN substr(p_event, 7)::uuid END
$$;
