-- A duration option of the SQL API (seconds as a JSON number), checked as the Python
-- clients check it: finite, not negative (nor zero unless allowed; then nor under the
-- microsecond the database keeps, which would store zero), at most p_max seconds. NULL
-- when the option is absent or JSON null. The JSON number is read exactly (numeric):
-- 1e400 is too long, not an overflow, and a positive number too small for a double
-- (1e-400) is refused, not read as zero.
CREATE OR REPLACE FUNCTION @schema.option_seconds(
    p_value jsonb, p_what text, p_allow_zero boolean, p_max double precision
) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_exact numeric;
BEGIN
    IF p_value IS NULL OR jsonb_typeof(p_value) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(p_value) <> 'number' THEN
        PERFORM @schema.refuse(format('%s must be a number of seconds, got %s', p_what,
            @schema.shown(p_value)));
    END IF;
    v_exact := p_value::numeric;
    IF v_exact < 0 OR (v_exact = 0 AND NOT p_allow_zero) OR v_exact > p_max::numeric THEN
        PERFORM @schema.refuse(format('%s must be %s and at most %s seconds, got %s', p_what,
            CASE WHEN p_allow_zero THEN 'zero or more' ELSE 'more than zero' END, p_max,
            @schema.shown(p_value)));
    END IF;
    -- Stored as zero microseconds (what rounds to zero, or is too small for a double):
    -- refused when zero is.
    IF NOT p_allow_zero AND v_exact < 0.000001 AND (CASE WHEN v_exact < 1e-300 THEN true
            ELSE make_interval(secs => v_exact::double precision) = interval '0' END) THEN
        PERFORM @schema.refuse(format('%s must be at least one microsecond, got %s', p_what,
            @schema.shown(p_value)));
    END IF;
    RETURN @schema.exact_double(v_exact, p_what);
END
$$;
