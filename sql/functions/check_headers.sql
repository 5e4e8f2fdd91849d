-- Headers given to the SQL API: a JSON object whose keys follow the rules of every name
-- (as the Python clients check them): 1-200 characters without control characters, not
-- starting with the reserved '$'.
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
        ELSIF left(v_key, 1) = '$' THEN
            PERFORM @schema.refuse(format('header name %L starts with ''$'', which is '
                'reserved for durable_trio', v_key));
        END IF;
    END LOOP;
END
$$;
