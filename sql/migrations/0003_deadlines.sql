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

-- A deadline no longer applies once its task ended, or (a pending delay) started. SQL,
-- immutable: inlined into the sweep's statements.
CREATE FUNCTION @schema.deadline_void(p_kind text, p_state text, p_started timestamptz)
RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_state IN ('completed', 'failed', 'cancelled')
        OR (p_kind = 'max_pending_delay' AND p_started IS NOT NULL)
$$;

-- Cancel up to p_limit tasks whose deadline has passed, as claim_runs and heartbeat do
-- (same reasons). First, in one statement, forget every due deadline that no longer
-- applies (the task ended, or started before its pending delay ran out): a worker doing
-- thousands of tasks with a policy leaves that many rows falling due. A deadline found
-- early (the pending delay of a spawn made available later than created) is re-timed.
-- Each task is judged again under its runs' locks (a claim may be starting it), and each
-- cancellation is a subtransaction: a deadlock or a lock held past lock_timeout (say by
-- a long ctx.transaction) skips that task until the next sweep instead of failing the
-- sweep. Workers racing here skip each other's rows. Returns how many were cancelled.
CREATE FUNCTION @schema.enforce_deadlines(p_limit integer) RETURNS integer
LANGUAGE plpgsql
SET lock_timeout = '1s'
AS $$
DECLARE
    v_now timestamptz := @schema.clock_now();
    v_cancelled integer := 0;
    d record;
BEGIN
    DELETE FROM @schema.deadlines x
    WHERE (x.task_id, x.kind) IN (
        SELECT dl.task_id, dl.kind FROM @schema.deadlines dl
        JOIN @schema.tasks t ON t.task_id = dl.task_id
        WHERE dl.due_at <= v_now
          AND @schema.deadline_void(dl.kind, t.state, t.first_started_at)
        FOR UPDATE OF dl SKIP LOCKED);
    FOR d IN
        SELECT dl.task_id, dl.kind FROM @schema.deadlines dl WHERE dl.due_at <= v_now
        ORDER BY dl.due_at LIMIT p_limit FOR UPDATE SKIP LOCKED
    LOOP
        BEGIN
            v_cancelled := v_cancelled + @schema.enforce_deadline(d.task_id, d.kind, v_now);
        EXCEPTION WHEN deadlock_detected OR lock_not_available THEN
            NULL;  -- the row stays due: the next sweep tries again
        END;
    END LOOP;
    RETURN v_cancelled;
END
$$;

-- One due deadline row, locked by the caller: cancel its task (1), or re-time or drop the
-- row (0). The task's runs are locked first (the order every function uses), so a claim
-- in progress has either committed its start, which is then seen, or waits for this.
CREATE FUNCTION @schema.enforce_deadline(p_task uuid, p_kind text, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    t record;
    v_due timestamptz;
BEGIN
    PERFORM 1 FROM @schema.runs WHERE task_id = p_task
        AND state IN ('pending', 'running', 'sleeping') ORDER BY run_id FOR UPDATE;
    SELECT tk.state, tk.first_started_at, tk.max_pending_delay, tk.max_duration,
        (SELECT r.available_at FROM @schema.runs r
         WHERE r.task_id = tk.task_id AND r.attempt = 1) AS available_at
    INTO t FROM @schema.tasks tk WHERE tk.task_id = p_task;
    v_due := CASE p_kind WHEN 'max_pending_delay' THEN t.available_at + t.max_pending_delay
                         ELSE t.first_started_at + t.max_duration END;
    IF @schema.deadline_void(p_kind, t.state, t.first_started_at) THEN
        DELETE FROM @schema.deadlines WHERE task_id = p_task AND kind = p_kind;
        RETURN 0;
    END IF;
    IF v_due >= p_now THEN  -- claim_runs and heartbeat cancel only once it is passed
        UPDATE @schema.deadlines SET due_at = v_due WHERE task_id = p_task AND kind = p_kind;
        RETURN 0;
    END IF;
    DELETE FROM @schema.deadlines WHERE task_id = p_task AND kind = p_kind;
    RETURN least(@schema.cancel_task(p_task, p_kind || ' exceeded'), 1);
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
