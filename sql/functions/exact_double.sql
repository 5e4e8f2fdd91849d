-- A number of the SQL API's input (read exactly, as numeric, and already bounded above by
-- its caller) as a double precision; refused (SQLSTATE 22023, naming p_what) when it is
-- not zero but too small for one, instead of the cast's numeric_value_out_of_range or a
-- silent zero.
CREATE OR REPLACE FUNCTION @schema.exact_double(p_exact numeric, p_what text)
RETURNS double precision
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_exact IS NULL OR p_exact = 0 OR abs(p_exact) >= 1e-300 THEN
        RETURN p_exact::double precision;  -- the usual case: no subtransaction below
    END IF;
    BEGIN
        IF p_exact::double precision <> 0 THEN
            RETURN p_exact::double precision;
        END IF;
    EXCEPTION WHEN numeric_value_out_of_range THEN
        NULL;  -- refused below
    END;
    PERFORM @schema.refuse(format('%s is too small to be told from zero, got %s: give 0 '
        'or a larger number', p_what, @schema.shown(to_jsonb(p_exact))));
END
$$;
