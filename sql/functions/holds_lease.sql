-- The fence every write a worker makes for a run is conditional on (invariant 2 in
-- docs/architecture.md): the run is running, owned by p_worker, and its lease has not
-- expired at p_now. One IMMUTABLE SQL expression, so the planner inlines it into each
-- caller's query: no function call per row, and index predicates still match.
CREATE OR REPLACE FUNCTION @schema.holds_lease(
    p_owner text, p_state text, p_lease_expires_at timestamptz, p_worker text,
    p_now timestamptz
) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_owner = p_worker AND p_state = 'running' AND p_lease_expires_at > p_now
$$;
