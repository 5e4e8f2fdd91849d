-- PL/pgSQL rather than SQL: a SQL function that cannot be inlined (this one has a
-- sub-select) is re-planned on every call, which cost ~50 us per call in the hot path.
CREATE OR REPLACE FUNCTION @schema.clock_now() RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN clock_timestamp() + (SELECT offset_by FROM @schema.clock);
END
$$;
