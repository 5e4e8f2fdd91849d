-- A descendant cancelled with its ancestor names its own parent (it named the ancestor
-- the cancellation started from).
CREATE OR REPLACE FUNCTION @schema.cancel_task(p_task uuid, p_reason text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_ids uuid[];
    v_id uuid;
BEGIN
    WITH RECURSIVE tree AS (
        SELECT task_id FROM @schema.tasks WHERE task_id = p_task
        UNION
        SELECT c.task_id FROM @schema.tasks c JOIN tree ON c.parent_task_id = tree.task_id
    )
    SELECT array_agg(t.task_id ORDER BY t.task_id) INTO v_ids
    FROM @schema.tasks t JOIN tree USING (task_id)
    WHERE t.state NOT IN ('completed', 'failed', 'cancelled');
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    -- Lock runs before tasks, the order every other function uses (no deadlocks), then
    -- re-check under the locks: a task that finished meanwhile keeps its outcome.
    PERFORM 1 FROM @schema.runs WHERE task_id = ANY (v_ids)
        AND state IN ('pending', 'running', 'sleeping') ORDER BY run_id FOR UPDATE;
    PERFORM 1 FROM @schema.tasks WHERE task_id = ANY (v_ids) ORDER BY task_id FOR UPDATE;
    WITH done AS (
        UPDATE @schema.tasks SET state = 'cancelled', finished_at = v_now,
            cancel_reason = CASE WHEN task_id = p_task THEN p_reason
                                 ELSE 'parent ' || parent_task_id::text || ' ended' END
        WHERE task_id = ANY (v_ids) AND state NOT IN ('completed', 'failed', 'cancelled')
        RETURNING task_id
    )
    SELECT array_agg(done.task_id ORDER BY done.task_id) INTO v_ids FROM done;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    UPDATE @schema.runs SET state = 'cancelled', finished_at = v_now, lease_expires_at = NULL
    WHERE task_id = ANY (v_ids) AND state IN ('pending', 'running', 'sleeping');
    DELETE FROM @schema.waits WHERE task_id = ANY (v_ids);
    FOREACH v_id IN ARRAY v_ids LOOP
        PERFORM @schema.announce_end(v_id);
    END LOOP;
    PERFORM pg_notify('durable_trio_cancel', @schema_literal);
    RETURN array_length(v_ids, 1);
END
$$;
