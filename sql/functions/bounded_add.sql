-- p_at + p_by, with p_by clamped to +-36525 days: MAX_DURATION, the bound durable_trio
-- puts on every duration it accepts (src/durable_trio/_core/durations.py). Durations
-- from Python are within it already; a row written around Python (plain SQL, say a
-- max_duration of a million years) must not make the clock arithmetic overflow a
-- timestamptz and fail the claim, heartbeat or sweep that reads it. SQL and STABLE
-- (timestamptz + interval depends on the time zone), so it is inlined where it is used.
CREATE OR REPLACE FUNCTION @schema.bounded_add(p_at timestamptz, p_by interval)
RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    -- CASE, not least/greatest: those skip a NULL, and NULL (no policy) must stay NULL.
    SELECT p_at + CASE WHEN p_by > interval '36525 days' THEN interval '36525 days'
                       WHEN p_by < interval '-36525 days' THEN interval '-36525 days'
                       ELSE p_by END
$$;
