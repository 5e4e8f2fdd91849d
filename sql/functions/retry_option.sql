-- The retry option of the SQL API, checked and completed into the stored form
-- {kind, base, factor, max_delay, jitter}: the same defaults and limits as the Python
-- RetryStrategy (absent: exponential from 1 s, factor 2, capped at 1 h, jitter 0.1; a
-- fixed strategy's max_delay is its base).
CREATE OR REPLACE FUNCTION @schema.retry_option(p_retry jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    v_max constant double precision := 3155760000;  -- 100 years, the library's bound
    v_kind text;
    v_base double precision;
    v_factor double precision;
    v_jitter double precision;
BEGIN
    IF p_retry IS NULL OR jsonb_typeof(p_retry) = 'null' THEN
        p_retry := '{"kind": "exponential", "base": 1.0, "jitter": 0.1}';
    END IF;
    IF jsonb_typeof(p_retry) <> 'object' OR EXISTS (SELECT 1 FROM jsonb_object_keys(p_retry) k
            WHERE k NOT IN ('kind', 'base', 'factor', 'max_delay', 'jitter')) THEN
        PERFORM @schema.refuse(format('retry must be an object with kind and any of base, '
            'factor, max_delay, jitter, got %s', p_retry));
    END IF;
    v_kind := p_retry ->> 'kind';
    IF v_kind IS NULL OR v_kind NOT IN ('none', 'fixed', 'exponential') THEN
        PERFORM @schema.refuse(format('retry kind %L is unknown: use one of none, fixed, '
            'exponential', v_kind));
    END IF;
    v_base := coalesce(@schema.option_seconds(p_retry -> 'base', 'retry base delay', true,
        v_max), CASE v_kind WHEN 'exponential' THEN 1.0 ELSE 0.0 END);
    -- Checked before any cast, and in numeric (exact: 1e400 is out of range, not an
    -- overflow, and the type is known before a string could reach a cast).
    IF jsonb_typeof(coalesce(p_retry -> 'factor', '2')) <> 'number'
       OR coalesce(p_retry -> 'factor', '2')::numeric NOT BETWEEN 1 AND 100 THEN
        PERFORM @schema.refuse(format('retry factor must be between 1 and 100, got %s',
            @schema.shown(p_retry -> 'factor')));
    END IF;
    IF jsonb_typeof(coalesce(p_retry -> 'jitter', '0')) <> 'number'
       OR coalesce(p_retry -> 'jitter', '0')::numeric NOT BETWEEN 0 AND 1 THEN
        PERFORM @schema.refuse(format('retry jitter must be between 0 and 1, got %s',
            @schema.shown(p_retry -> 'jitter')));
    END IF;
    v_factor := coalesce((p_retry -> 'factor')::numeric::double precision, 2.0);
    v_jitter := coalesce(@schema.exact_double((p_retry -> 'jitter')::numeric, 'retry jitter'),
        CASE v_kind WHEN 'exponential' THEN 0.1 ELSE 0.0 END);
    RETURN jsonb_build_object('kind', v_kind, 'base', v_base, 'factor', v_factor,
        'max_delay', coalesce(@schema.option_seconds(p_retry -> 'max_delay',
            'retry max_delay', true, v_max), CASE v_kind WHEN 'fixed' THEN v_base
            ELSE 3600.0 END),
        'jitter', v_jitter);
END
$$;
