-- The checks the SQL API makes of a spawn or an emit before writing anything (SQLSTATE
-- 22023, see refuse): the queue, the task or event name (p_kind says which) and the size
-- of its JSON (p_data; p_data_kind begins the message, e.g. 'params are').
CREATE OR REPLACE FUNCTION @schema.check_message(
    p_queue text, p_name text, p_kind text, p_data jsonb, p_data_kind text
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM @schema.check_queue(p_queue);
    PERFORM @schema.check_name(p_name, p_kind);
    IF octet_length(coalesce(p_data, 'null')::text) > 10485760 THEN
        PERFORM @schema.refuse(p_data_kind || ' larger than 10 MiB of JSON');
    END IF;
END
$$;
