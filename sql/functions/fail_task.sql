-- Fail a task for good with p_error, whatever its runs are doing: the last resort of a
-- worker's loop that met a row it cannot process (a stored value that breaks one of its
-- statements every time; docs/reliability.md, "Poison rows"). With p_run, only while
-- that run is the task's latest attempt. Its runs end failed, its children are
-- cancelled and a parent is told, as fail_run does; a worker holding a run of it is
-- told through the cancel channel. Returns whether the task was failed.
CREATE OR REPLACE FUNCTION @schema.fail_task(p_task uuid, p_run uuid, p_error jsonb)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
BEGIN
    -- Runs before the task: the lock order every function uses.
    PERFORM 1 FROM @schema.runs WHERE task_id = p_task
        AND state IN ('pending', 'running', 'sleeping') ORDER BY run_id FOR UPDATE;
    UPDATE @schema.tasks SET state = 'failed', error = p_error, finished_at = v_now
    WHERE task_id = p_task AND state NOT IN ('completed', 'failed', 'cancelled')
      AND (p_run IS NULL OR last_run_id = p_run);
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE @schema.runs SET state = 'failed', finished_at = v_now, lease_expires_at = NULL,
        error = p_error
    WHERE task_id = p_task AND state IN ('pending', 'running', 'sleeping');
    DELETE FROM @schema.waits WHERE task_id = p_task;
    PERFORM @schema.cancel_task(c.task_id, 'parent ' || p_task::text || ' failed')
    FROM @schema.tasks c
    WHERE c.parent_task_id = p_task AND c.state NOT IN ('completed', 'failed', 'cancelled');
    PERFORM @schema.announce_end(p_task);
    PERFORM pg_notify('durable_trio_cancel', @schema_literal);
    RETURN true;
END
$$;
