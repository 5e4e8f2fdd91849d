-- Record (or refresh) a live worker; it counts as live until now + p_ttl. Rows of workers
-- that expired go at the same time.
CREATE OR REPLACE FUNCTION @schema.register_worker(
    p_worker text, p_host text, p_pid integer, p_queues text[], p_names text[],
    p_concurrency integer, p_ttl interval
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
BEGIN
    DELETE FROM @schema.workers WHERE expires_at < v_now AND worker_id <> p_worker;
    INSERT INTO @schema.workers AS w (worker_id, host, pid, queues, task_names, concurrency,
        started_at, last_seen_at, expires_at)
    VALUES (p_worker, p_host, p_pid, p_queues, p_names, p_concurrency, v_now, v_now,
        v_now + p_ttl)
    ON CONFLICT (worker_id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
        queues = EXCLUDED.queues, task_names = EXCLUDED.task_names,
        concurrency = EXCLUDED.concurrency, last_seen_at = v_now, expires_at = v_now + p_ttl,
        -- Another process under the same id (a restart) starts its own life.
        started_at = CASE WHEN w.pid = EXCLUDED.pid AND w.host = EXCLUDED.host
                          THEN w.started_at ELSE v_now END;
END
$$;
