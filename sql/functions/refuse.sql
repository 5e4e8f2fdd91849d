-- Bad input to a function of the SQL API: SQLSTATE 22023 (invalid_parameter_value, which
-- psycopg raises as InvalidParameterValue) with a message that says what to change. The
-- statement fails, so nothing is written.
CREATE OR REPLACE FUNCTION @schema.refuse(p_message text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'durable_trio: ' || p_message;
END
$$;
