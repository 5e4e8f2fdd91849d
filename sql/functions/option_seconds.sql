-- A duration option of the SQL API (seconds as a JSON number), checked as the Python
-- clients check it: finite, not negative (nor zero unless allowed), at most
-- p_max seconds. NULL when the option is absent or JSON null.
CREATE OR REPLACE FUNCTION @schema.option_seconds(
    p_value jsonb, p_what text, p_allow_zero boolean, p_max double precision
) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_seconds double precision;
BEGIN
    IF p_value IS NULL OR jsonb_typeof(p_value) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(p_value) <> 'number' THEN
        PERFORM @schema.refuse(format('%s must be a number of seconds, got %s', p_what, p_value));
    END IF;
    v_seconds := p_value::text::double precision;
    IF v_seconds < 0 OR (v_seconds = 0 AND NOT p_allow_zero) OR v_seconds > p_max THEN
        PERFORM @schema.refuse(format('%s must be %s and at most %s seconds, got %s', p_what,
            CASE WHEN p_allow_zero THEN 'zero or more' ELSE 'more than zero' END, p_max,
            p_value));
    END IF;
    RETURN v_seconds;
END
$$;
