-- durable_trio schema, version 3: CancellationPolicy deadlines for tasks no worker holds.
--
-- Until now a deadline was checked only when a worker claimed the task's run (and, for a
-- running task, at each heartbeat). A task suspended with nothing due to wake it (an
-- event wait without timeout, a join on a child that never ends) or pending under a name
-- no worker has registered was never claimed, so it outlived its max_duration or
-- max_pending_delay forever. Each deadline now has a row here, and every worker sweeps
-- the due ones (enforce_deadlines, on the lease-reaping cadence).
--
-- Rows are written by triggers only for tasks that have a policy: max_pending_delay when
-- the task is created (due at created_at + delay; a spawn delayed or scheduled later is
-- re-timed by the sweep), max_duration when it first starts. Neither touches an indexed
-- column of tasks, so its state changes stay HOT updates.
CREATE TABLE @schema.deadlines (
    task_id uuid NOT NULL REFERENCES @schema.tasks ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('max_pending_delay', 'max_duration')),
    due_at timestamptz NOT NULL,
    PRIMARY KEY (task_id, kind)
);
CREATE INDEX deadlines_due ON @schema.deadlines (due_at);

-- The trigger's argument is the kind of deadline to note.
CREATE FUNCTION @schema.note_deadline() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO @schema.deadlines (task_id, kind, due_at)
    VALUES (NEW.task_id, TG_ARGV[0], CASE TG_ARGV[0]
        WHEN 'max_pending_delay' THEN NEW.created_at + NEW.max_pending_delay
        ELSE NEW.first_started_at + NEW.max_duration END)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_pending_deadline AFTER INSERT ON @schema.tasks
FOR EACH ROW WHEN (NEW.max_pending_delay IS NOT NULL)
EXECUTE FUNCTION @schema.note_deadline('max_pending_delay');

CREATE TRIGGER tasks_duration_deadline AFTER UPDATE OF first_started_at ON @schema.tasks
FOR EACH ROW WHEN (OLD.first_started_at IS NULL AND NEW.first_started_at IS NOT NULL
    AND NEW.max_duration IS NOT NULL)
EXECUTE FUNCTION @schema.note_deadline('max_duration');

-- Tasks that already exist when this migration runs.
INSERT INTO @schema.deadlines (task_id, kind, due_at)
SELECT task_id, 'max_pending_delay', created_at + max_pending_delay FROM @schema.tasks
WHERE max_pending_delay IS NOT NULL AND first_started_at IS NULL
  AND state NOT IN ('completed', 'failed', 'cancelled')
UNION ALL
SELECT task_id, 'max_duration', first_started_at + max_duration FROM @schema.tasks
WHERE max_duration IS NOT NULL AND first_started_at IS NOT NULL
  AND state NOT IN ('completed', 'failed', 'cancelled');

-- Cancel up to p_limit tasks whose deadline has passed, as claim_runs and heartbeat do
-- (same reasons), and forget deadlines that no longer apply: the task ended, or started
-- before its pending delay ran out. A deadline found early (the pending delay of a spawn
-- made available later than created) is re-timed instead. Workers racing here skip each
-- other's rows. Returns how many tasks were cancelled.
CREATE FUNCTION @schema.enforce_deadlines(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_cancelled integer := 0;
    d record;
    t record;
    v_due timestamptz;
BEGIN
    FOR d IN
        SELECT dl.task_id, dl.kind FROM @schema.deadlines dl WHERE dl.due_at <= v_now
        ORDER BY dl.due_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    LOOP
        SELECT tk.state, tk.first_started_at, tk.max_pending_delay, tk.max_duration,
            (SELECT r.available_at FROM @schema.runs r
             WHERE r.task_id = tk.task_id AND r.attempt = 1) AS available_at
        INTO t FROM @schema.tasks tk WHERE tk.task_id = d.task_id;
        IF t.state IN ('completed', 'failed', 'cancelled')
            OR (d.kind = 'max_pending_delay' AND t.first_started_at IS NOT NULL) THEN
            DELETE FROM @schema.deadlines WHERE task_id = d.task_id AND kind = d.kind;
            CONTINUE;
        END IF;
        v_due := CASE d.kind WHEN 'max_pending_delay' THEN t.available_at + t.max_pending_delay
                             ELSE t.first_started_at + t.max_duration END;
        IF v_due >= v_now THEN  -- claim_runs and heartbeat cancel only once it is passed
            UPDATE @schema.deadlines SET due_at = v_due
            WHERE task_id = d.task_id AND kind = d.kind;
            CONTINUE;
        END IF;
        v_cancelled := v_cancelled
            + least(@schema.cancel_task(d.task_id, d.kind || ' exceeded'), 1);
        DELETE FROM @schema.deadlines WHERE task_id = d.task_id AND kind = d.kind;
    END LOOP;
    RETURN v_cancelled;
END
$$;

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
