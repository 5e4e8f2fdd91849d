-- A JSON value of the SQL API's input as a refusal shows it: bounded, so that a number
-- of 400 digits (1e400 as numeric prints them all) or a long string keeps the message
-- one readable line.
CREATE OR REPLACE FUNCTION @schema.shown(p_value jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN length(p_value::text) <= 80 THEN p_value::text
        ELSE left(p_value::text, 77) || '...' END
$$;
