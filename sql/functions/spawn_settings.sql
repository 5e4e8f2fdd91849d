-- The SQL API's spawn input (docs/sql.md) checked as the Python clients check it and
-- completed into spawn_task's arguments: defaults filled in, durations as intervals, ids
-- made when not given (UUIDv7). Refuses with SQLSTATE 22023 (see refuse). Used by spawn,
-- and by put_schedule, so that a schedule whose tasks spawn would refuse is refused when
-- it is written rather than each time it fires.
CREATE OR REPLACE FUNCTION @schema.spawn_settings(
    p_queue text, p_task_name text, p_params jsonb, p_options jsonb,
    OUT task_id uuid, OUT run_id uuid, OUT headers jsonb, OUT retry jsonb,
    OUT max_attempts integer, OUT priority integer, OUT delay interval,
    OUT start_at timestamptz, OUT idempotency_key text, OUT max_pending_delay interval,
    OUT max_duration interval
)
LANGUAGE plpgsql AS $$
DECLARE
    v_max constant double precision := 3155760000;  -- 100 years, the library's bound
    v_opts jsonb := coalesce(p_options, '{}');
    v_cancel jsonb;
    v_unknown text;
    v_delay double precision;
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

    max_attempts := @schema.option_integer(v_opts -> 'max_attempts', 'max_attempts', 1, 10000,
        5);
    priority := @schema.option_integer(v_opts -> 'priority', 'priority', -1000000, 1000000, 0);
    retry := @schema.retry_option(v_opts -> 'retry');
    headers := coalesce(v_opts -> 'headers', '{}');
    PERFORM @schema.check_headers(headers);
    v_delay := @schema.option_seconds(v_opts -> 'delay', 'delay', true, v_max);
    delay := make_interval(secs => v_delay);
    IF v_opts ? 'start_at' AND jsonb_typeof(v_opts -> 'start_at') <> 'null' THEN
        IF v_delay IS NOT NULL THEN
            PERFORM @schema.refuse('give either delay or start_at, not both');
        END IF;
        IF jsonb_typeof(v_opts -> 'start_at') <> 'string'
           OR (v_opts ->> 'start_at') !~ '(Z|[+-]\d\d(:?\d\d)?)$' THEN
            PERFORM @schema.refuse(format('start_at must be an ISO 8601 timestamp with a '
                'UTC offset (e.g. "2027-01-01T09:00:00Z"), got %s', v_opts -> 'start_at'));
        END IF;
        BEGIN  -- a subtransaction only when start_at is given
            start_at := (v_opts ->> 'start_at')::timestamptz;
        EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow
                OR invalid_time_zone_displacement_value THEN
            PERFORM @schema.refuse(format('start_at must be a valid ISO 8601 timestamp with '
                'a UTC offset (e.g. "2027-01-01T09:00:00Z"), got %s (%s)',
                @schema.shown(v_opts -> 'start_at'), SQLERRM));
        END;
        IF start_at > @schema.clock_now() + make_interval(secs => v_max) THEN
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
        idempotency_key := v_opts ->> 'idempotency_key';
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
    max_pending_delay := make_interval(secs => @schema.option_seconds(
        v_cancel -> 'max_pending_delay', 'max_pending_delay', false, v_max));
    max_duration := make_interval(secs => @schema.option_seconds(
        v_cancel -> 'max_duration', 'max_duration', false, v_max));
    task_id := @schema.option_uuid(v_opts -> 'task_id', 'task_id');
    run_id := @schema.option_uuid(v_opts -> 'run_id', 'run_id');
END
$$;
