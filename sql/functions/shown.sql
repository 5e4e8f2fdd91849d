-- A JSON value of the SQL API's input as a refusal shows it: bounded, so that a long
-- string or a number of 400 digits (1e400 and 1e-400 as numeric print them all; they
-- are shown as 1.000000e+400) keeps the message one readable line.
CREATE OR REPLACE FUNCTION @schema.shown(p_value jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN length(p_value::text) <= 80 THEN p_value::text
        WHEN jsonb_typeof(p_value) = 'number'
            THEN trim(to_char(p_value::numeric, '9.999999EEEE'))
        ELSE left(p_value::text, 77) || '...' END
$$;
