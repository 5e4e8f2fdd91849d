-- durable_trio schema, version 4: indexes for the inspection API (Durable.list_tasks,
-- queue_stats) and for retry (Durable.retry, function retry_task).
--
-- list_tasks pages in task_id order (UUIDv7: creation order) with a keyset cursor, so a
-- page costs O(page) however many finished tasks there are, as long as the filter it
-- scans by is selective through an index whose order is task_id. Every index on tasks
-- below is on columns that never change after the insert: a task's state changes stay HOT
-- updates (a partial index on tasks.state would have made every claim, suspension and
-- completion write an entry into each index of the table); a spawn pays the inserts.
CREATE INDEX tasks_queue_list ON @schema.tasks (queue, task_id);
CREATE INDEX tasks_name_list ON @schema.tasks (task_name, task_id);
-- created_after: where the range starts in task_id order (the least id in it, read off
-- this index's entries for the range).
CREATE INDEX tasks_created ON @schema.tasks (created_at, task_id);
-- A parent's children in task_id order (list_tasks(parent=...)); still serves the
-- lookups by parent alone that cancellation makes.
DROP INDEX @schema.tasks_parent;
CREATE INDEX tasks_parent ON @schema.tasks (parent_task_id, task_id)
    WHERE parent_task_id IS NOT NULL;

-- Tasks that failed or were cancelled, found through their runs: a run's row is written
-- anew on every state change anyway (its partial claim indexes name its state), and this
-- partial index takes an entry only when a run fails or is cancelled, never on a claim
-- or a completion. list_tasks(state=failed|cancelled) walks it in task_id order, and
-- queue_stats counts recent failures through the second one.
CREATE INDEX runs_ended_task ON @schema.runs (task_id)
    WHERE state IN ('failed', 'cancelled');
CREATE INDEX runs_ended_at ON @schema.runs (finished_at)
    WHERE state IN ('failed', 'cancelled');
