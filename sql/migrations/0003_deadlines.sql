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
