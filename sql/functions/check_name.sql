-- A task, event or step name given to the SQL API, checked as the Python clients check
-- it: 1-200 characters, no control characters, not starting with the reserved '$'.
CREATE OR REPLACE FUNCTION @schema.check_name(p_name text, p_what text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_name IS NULL OR length(p_name) NOT BETWEEN 1 AND 200 THEN
        PERFORM @schema.refuse(format('%s must be 1 to 200 characters long, got %L',
            p_what, p_name));
    ELSIF p_name ~ '[[:cntrl:]]' THEN
        PERFORM @schema.refuse(format('%s %L contains control characters', p_what, p_name));
    ELSIF left(p_name, 1) = '$' THEN
        PERFORM @schema.refuse(format('%s %L starts with ''$'', which is reserved for '
            'durable_trio', p_what, p_name));
    END IF;
END
$$;
