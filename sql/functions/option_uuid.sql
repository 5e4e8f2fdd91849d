-- An id option of the SQL API: the caller's UUID, or a new UUIDv7 when absent or null.
CREATE OR REPLACE FUNCTION @schema.option_uuid(p_value jsonb, p_what text) RETURNS uuid
LANGUAGE plpgsql AS $$
BEGIN
    IF p_value IS NULL OR jsonb_typeof(p_value) = 'null' THEN
        RETURN @schema.uuid7();
    END IF;
    IF jsonb_typeof(p_value) <> 'string'
       OR (p_value #>> '{}') !~* '^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$' THEN
        PERFORM @schema.refuse(format('%s must be a UUID string, got %s', p_what, p_value));
    END IF;
    RETURN (p_value #>> '{}')::uuid;
END
$$;
