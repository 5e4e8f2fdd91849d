-- Spawn settings in the shape of the SQL API's options (docs/sql.md): what a schedule
-- stores for the tasks it spawns, so that firing it is a call of spawn. Durations become
-- seconds; a cancellation limit that is not set is left out.
CREATE OR REPLACE FUNCTION @schema.spawn_options(
    p_headers jsonb, p_retry jsonb, p_max_attempts integer, p_priority integer,
    p_max_pending_delay interval, p_max_duration interval
) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('headers', p_headers, 'retry', p_retry,
        'max_attempts', p_max_attempts, 'priority', p_priority,
        'cancellation', jsonb_strip_nulls(jsonb_build_object(
            'max_pending_delay', extract(epoch FROM p_max_pending_delay),
            'max_duration', extract(epoch FROM p_max_duration))))
$$;
