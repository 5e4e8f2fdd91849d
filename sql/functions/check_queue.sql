-- A queue name given to the SQL API, checked as the Python clients check it.
CREATE OR REPLACE FUNCTION @schema.check_queue(p_queue text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_queue IS NULL OR p_queue !~ '^[a-z_][a-z0-9_]{0,47}$' THEN
        PERFORM @schema.refuse(format('queue name %L is invalid: use 1-48 characters of '
            'lowercase letters, digits and underscores, not starting with a digit', p_queue));
    END IF;
END
$$;
