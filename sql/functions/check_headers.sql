-- Headers given to the SQL API: a JSON object whose keys are 1-200 characters without
-- control characters.
CREATE OR REPLACE FUNCTION @schema.check_headers(p_headers jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_key text;
BEGIN
    IF jsonb_typeof(p_headers) <> 'object' THEN
        PERFORM @schema.refuse(format('headers must be a JSON object, got %s', p_headers));
    END IF;
    FOR v_key IN SELECT jsonb_object_keys(p_headers) LOOP
        IF length(v_key) NOT BETWEEN 1 AND 200 OR v_key ~ '[[:cntrl:]]' THEN
            PERFORM @schema.refuse(format('header name %L must be 1-200 characters without '
                'control characters', v_key));
        END IF;
    END LOOP;
END
$$;
