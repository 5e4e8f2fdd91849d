-- An integer option of the SQL API within [p_min, p_max]; p_default when absent or null.
CREATE OR REPLACE FUNCTION @schema.option_integer(
    p_value jsonb, p_what text, p_min integer, p_max integer, p_default integer
) RETURNS integer
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_value IS NULL OR jsonb_typeof(p_value) = 'null' THEN
        RETURN p_default;
    END IF;
    IF jsonb_typeof(p_value) <> 'number' OR p_value::text !~ '^-?\d+$'
       OR p_value::text::numeric NOT BETWEEN p_min AND p_max THEN
        PERFORM @schema.refuse(format('%s must be an integer from %s to %s, got %s',
            p_what, p_min, p_max, p_value));
    END IF;
    RETURN p_value::text::integer;
END
$$;
