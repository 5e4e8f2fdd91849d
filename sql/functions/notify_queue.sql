CREATE OR REPLACE FUNCTION @schema.notify_queue(p_queue text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('durable_trio', @schema_literal || '.' || p_queue)
$$;
