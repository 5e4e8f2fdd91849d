-- durable_trio schema, version 5: cron schedules, fired by the workers (no extension).
--
-- One row per schedule. `next_fire_at` is the first slot not spawned yet; every worker's
-- reaping pass reads the due rows, works out in Python (cronsim) which slots to spawn and
-- the slot after, and calls fire_schedule, which spawns them and moves `next_fire_at` on
-- in one transaction, only if no other worker has moved it meanwhile. Each slot's task
-- also carries the idempotency key 'schedule:<id>:<slot in UTC>', so a slot is spawned
-- at most once whatever happens; and since the spawn and the move commit together, a
-- worker that dies mid-way leaves the slot due for the next one.
--
-- The spawn settings are one JSON object in the shape of the SQL API's options
-- (docs/sql.md; built by spawn_options), validated by the client when the schedule is
-- written, so that firing a slot is a call of spawn. Schemas made before version 9
-- held them as six columns; 0009_schedule_options.sql turns those into this object.
CREATE TABLE @schema.schedules (
    schedule_id text PRIMARY KEY,
    queue text NOT NULL,
    task_name text NOT NULL,
    params jsonb NOT NULL,
    options jsonb NOT NULL,
    cron text NOT NULL,
    timezone text NOT NULL,
    missed text NOT NULL CHECK (missed IN ('skip', 'latest', 'all')),
    paused boolean NOT NULL DEFAULT false,
    next_fire_at timestamptz NOT NULL,
    last_fired_at timestamptz,
    last_task_id uuid,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
-- What each pass asks: the due schedules that are not paused.
CREATE INDEX schedules_due ON @schema.schedules (next_fire_at) WHERE NOT paused;
