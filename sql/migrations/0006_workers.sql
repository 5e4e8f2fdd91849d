-- durable_trio schema, version 6: the workers registry.
--
-- Each worker records itself when it starts (register_worker), refreshes its row on its
-- periodic pass and removes it when it stops (unregister_worker). A row whose expires_at
-- has passed belongs to a worker that vanished without stopping (killed, or cut off from
-- the database); readers ignore it and the next registration removes it. The registry
-- also tells which due runs no live worker can run (unserved_tasks): a typo in a task
-- name, or a deploy that dropped a task.
CREATE TABLE @schema.workers (
    worker_id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    queues text[] NOT NULL,
    task_names text[] NOT NULL,
    concurrency integer NOT NULL,
    started_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
