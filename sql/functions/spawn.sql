-- The SQL API's spawn (docs/sql.md): start a task from any client that speaks SQL.
-- Checks its input as the Python clients do and writes nothing when it refuses (SQLSTATE
-- 22023, see refuse). p_options is a JSON object with any of: max_attempts, retry
-- {kind, base, factor, max_delay, jitter}, headers, priority, delay, start_at,
-- idempotency_key, cancellation {max_pending_delay, max_duration}, task_id, run_id.
-- Durations are seconds. Ids not given are made here (UUIDv7).
CREATE OR REPLACE FUNCTION @schema.spawn(
    p_queue text, p_task_name text, p_params jsonb DEFAULT 'null',
    p_options jsonb DEFAULT '{}'
) RETURNS TABLE (task_id uuid, run_id uuid, attempt integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_max constant double precision := 3155760000;  -- 100 years, the library's bound
    v_opts jsonb := coalesce(p_options, '{}');
    v_retry jsonb;
    v_cancel jsonb;
    v_unknown text;
    v_attempts integer;
    v_priority integer;
    v_delay double precision;
    v_start timestamptz;
    v_key text;
BEGIN
    PERFORM @schema.check_message(p_queue, p_task_name, 'task name', p_params, 'params are');
    IF jsonb_typeof(v_opts) <> 'object' THEN
        PERFORM @schema.refuse(format('options must be a JSON object, got %s', v_opts));
    END IF;
    SELECT string_agg(k, ', ' ORDER BY k) INTO v_unknown FROM jsonb_object_keys(v_opts) k
    WHERE k NOT IN ('max_attempts', 'retry', 'headers', 'priority', 'delay', 'start_at',
        'idempotency_key', 'cancellation', 'task_id', 'run_id');
    IF v_unknown IS NOT NULL THEN
        PERFORM @schema.refuse(format('options has unknown keys: %s', v_unknown));
    END IF;

    v_attempts := @schema.option_integer(v_opts -> 'max_attempts', 'max_attempts', 1, 10000, 5);
    v_priority := @schema.option_integer(v_opts -> 'priority', 'priority', -1000000, 1000000, 0);
    v_retry := @schema.retry_option(v_opts -> 'retry');
    PERFORM @schema.check_headers(coalesce(v_opts -> 'headers', '{}'));
    v_delay := @schema.option_seconds(v_opts -> 'delay', 'delay', true, v_max);
    IF v_opts ? 'start_at' AND jsonb_typeof(v_opts -> 'start_at') <> 'null' THEN
        IF v_delay IS NOT NULL THEN
            PERFORM @schema.refuse('give either delay or start_at, not both');
        END IF;
        IF jsonb_typeof(v_opts -> 'start_at') <> 'string'
           OR (v_opts ->> 'start_at') !~ '(Z|[+-]\d\d(:?\d\d)?)$' THEN
            PERFORM @schema.refuse(format('start_at must be an ISO 8601 timestamp with a '
                'UTC offset (e.g. "2027-01-01T09:00:00Z"), got %s', v_opts -> 'start_at'));
        END IF;
        v_start := (v_opts ->> 'start_at')::timestamptz;
        IF v_start > @schema.clock_now() + make_interval(secs => v_max) THEN
            PERFORM @schema.refuse(format('start_at must be at most %s seconds from now, '
                'got %s', v_max, v_opts -> 'start_at'));
        END IF;
    END IF;
    IF v_opts ? 'idempotency_key' AND jsonb_typeof(v_opts -> 'idempotency_key') <> 'null' THEN
        IF jsonb_typeof(v_opts -> 'idempotency_key') <> 'string'
           OR length(v_opts ->> 'idempotency_key') NOT BETWEEN 1 AND 500 THEN
            PERFORM @schema.refuse(format('idempotency_key must be a string of 1-500 '
                'characters, got %s', v_opts -> 'idempotency_key'));
        END IF;
        v_key := v_opts ->> 'idempotency_key';
    END IF;
    v_cancel := coalesce(v_opts -> 'cancellation', '{}');
    IF jsonb_typeof(v_cancel) = 'null' THEN
        v_cancel := '{}';
    END IF;
    IF jsonb_typeof(v_cancel) <> 'object' OR EXISTS (SELECT 1 FROM jsonb_object_keys(v_cancel) k
            WHERE k NOT IN ('max_pending_delay', 'max_duration')) THEN
        PERFORM @schema.refuse(format('cancellation must be an object with max_pending_delay '
            'and/or max_duration (seconds), got %s', v_cancel));
    END IF;

    RETURN QUERY
    SELECT s.task_id, s.run_id, s.attempt
    FROM @schema.spawn_task(
        @schema.option_uuid(v_opts -> 'task_id', 'task_id'),
        @schema.option_uuid(v_opts -> 'run_id', 'run_id'),
        p_queue, p_task_name, coalesce(p_params, 'null'), coalesce(v_opts -> 'headers', '{}'),
        v_retry, v_attempts, v_priority, make_interval(secs => v_delay), v_start, v_key,
        make_interval(secs => @schema.option_seconds(
            v_cancel -> 'max_pending_delay', 'max_pending_delay', false, v_max)),
        make_interval(secs => @schema.option_seconds(
            v_cancel -> 'max_duration', 'max_duration', false, v_max)),
        NULL) s;
END
$$;
