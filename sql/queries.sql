-- Named queries, loaded by src/durable_trio/_store.py. "@schema" is the quoted schema.
-- Values are always parameters; nothing else is spliced in. A "-- part:" is no statement
-- of its own: "@part(name)" in a statement stands for its text (written once, used twice).

-- name: spawn_one
-- One spawn: the task and its first run, as spawn_tasks writes them, in plain SQL (a
-- plpgsql call and its per-statement executor cost a quarter more server time per spawn),
-- and the queue's NOTIFY. Positional: ClientCore's SPAWN_SHARED order after the item's
-- ids, params and key; the same text every time, so it is prepared per connection. No row
-- when the key names a task already on the queue: spawn_one_existing then reports it.
-- The clock is clock_now()'s expression: calling that plpgsql function cost ~15 us here.
WITH v AS NOT MATERIALIZED (
    SELECT %s::uuid AS task_id, %s::uuid AS run_id, %s::jsonb AS params, %s::text AS key,
        %s::text AS queue, %s::text AS task_name, %s::jsonb AS headers, %s::jsonb AS retry,
        %s::integer AS max_attempts, %s::integer AS priority, %s::interval AS delay,
        %s::timestamptz AS start_at, %s::interval AS max_pending_delay,
        %s::interval AS max_duration, %s::uuid AS parent
), made AS (
    INSERT INTO @schema.tasks AS t (task_id, queue, task_name, params, headers, retry,
        max_attempts, priority, max_pending_delay, max_duration, idempotency_key,
        parent_task_id, root_task_id, state, attempts, last_run_id, created_at)
    SELECT v.task_id, v.queue, v.task_name, v.params, v.headers, v.retry, v.max_attempts,
        v.priority, v.max_pending_delay, v.max_duration, v.key, v.parent,
        coalesce((SELECT coalesce(p.root_task_id, p.task_id) FROM @schema.tasks p
            WHERE p.task_id = v.parent), v.task_id),
        'pending', 1, v.run_id, clock_timestamp() + (SELECT offset_by FROM @schema.clock)
    FROM v
    ON CONFLICT (queue, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING t.task_id, t.last_run_id, t.queue, t.task_name, t.priority, t.created_at
), started AS (
    INSERT INTO @schema.runs (run_id, task_id, queue, task_name, priority, attempt, state,
        available_at, created_at)
    SELECT m.last_run_id, m.task_id, m.queue, m.task_name, m.priority, 1, 'pending',
        coalesce(v.start_at, m.created_at + coalesce(v.delay, '0 seconds')), m.created_at
    FROM made m, v
    RETURNING task_id, run_id, queue
)
SELECT s.task_id, s.run_id, 1 AS attempt, true AS created, @schema.notify_queue(s.queue)
FROM started s

-- name: spawn_one_existing
-- spawn_one's parameters through spawn_tasks, when spawn_one's key named a task: a later
-- statement, so it sees that task even when a concurrent spawn committed it meanwhile,
-- and reports it (created false); or spawns, if it was removed since.
SELECT * FROM @schema.spawn_tasks(ARRAY[%s::uuid], ARRAY[%s::uuid], ARRAY[%s::text],
    ARRAY[%s::text], %s::text, %s::text, %s::jsonb, %s::jsonb, %s::integer, %s::integer,
    %s::interval, %s::timestamptz, %s::interval, %s::interval, %s::uuid)

-- name: task_parent
SELECT (SELECT parent_task_id FROM @schema.tasks WHERE task_id = %(task_id)s) AS parent

-- name: spawn_tasks
-- Many spawns of one name with shared settings: spawn_one's parameters with the first
-- four as array literals.
SELECT * FROM @schema.spawn_tasks(%s::uuid[], %s::uuid[], %s::text[], %s::text[],
    %s::text, %s::text, %s::jsonb, %s::jsonb, %s::integer, %s::integer, %s::interval,
    %s::timestamptz, %s::interval, %s::interval, %s::uuid)

-- name: claim_runs
SELECT * FROM @schema.claim_runs(%(queue)s, %(worker)s, %(names)s::text[], %(limit)s,
    %(lease)s::interval, %(version)s)

-- name: claim_runs_singly
SELECT * FROM @schema.claim_runs(%(queue)s, %(worker)s, %(names)s::text[], %(limit)s,
    %(lease)s::interval, %(version)s, p_singly => true)

-- name: heartbeat
SELECT * FROM @schema.heartbeat(%(worker)s, %(runs)s::uuid[], %(lease)s::interval)

-- name: lost_runs
-- Why runs a heartbeat did not renew were lost: each run's state, its task's cancel reason.
SELECT r.run_id, r.state, t.cancel_reason
FROM @schema.runs r JOIN @schema.tasks t USING (task_id)
WHERE r.run_id = ANY (%(runs)s::uuid[])

-- name: record_runs
-- The runs still owned, i.e. written (see the function).
SELECT @schema.record_runs(%(worker)s, %(writes)s::jsonb) AS owned

-- name: record_one
-- record_runs for one run's checkpoint, or its completion after at most one checkpoint
-- (see the function): whether the run was owned.
SELECT @schema.record_one(%(worker)s, %(run_id)s, %(claimed_at)s::timestamptz, %(name)s,
    %(value)s::jsonb, %(complete)s, %(result)s::jsonb) AS owned

-- name: record_one_and_claim
-- record_and_claim for the writes record_one takes: the same row shape.
WITH rec AS MATERIALIZED (
    SELECT CASE WHEN @schema.record_one(%(worker)s, %(run_id)s, %(claimed_at)s::timestamptz,
            %(name)s, %(value)s::jsonb, %(complete)s, %(result)s::jsonb)
        THEN ARRAY[%(run_id)s::uuid] ELSE '{}'::uuid[] END AS owned
)
SELECT rec.owned, c.*
FROM rec LEFT JOIN LATERAL @schema.claim_runs(%(queue)s, %(worker)s, %(names)s::text[],
    %(limit)s, %(lease)s::interval, %(version)s) AS c ON true

-- name: record_and_claim
-- A worker's group commit and the claim of its free slots, in one round trip and one
-- transaction: the writes first, then the claim (see claim_runs). Every row carries the
-- runs the writes found owned; a row of NULL claim columns means nothing was claimed.
WITH rec AS MATERIALIZED (
    SELECT @schema.record_runs(%(worker)s, %(writes)s::jsonb) AS owned
)
SELECT rec.owned, c.*
FROM rec LEFT JOIN LATERAL @schema.claim_runs(%(queue)s, %(worker)s, %(names)s::text[],
    %(limit)s, %(lease)s::interval, %(version)s) AS c ON true

-- name: lock_owned_run
SELECT @schema.lock_owned_run(%(run_id)s, %(worker)s) AS task_id

-- name: insert_checkpoint
INSERT INTO @schema.checkpoints (task_id, name, value, run_id, created_at)
VALUES (%(task_id)s, %(name)s, %(value)s::jsonb, %(run_id)s, @schema.clock_now())

-- name: get_checkpoint
SELECT value FROM @schema.checkpoints WHERE task_id = %(task_id)s AND name = %(name)s

-- name: fail_run
SELECT @schema.fail_run(%(run_id)s, %(worker)s, %(error)s::jsonb, %(retry)s,
    %(delay)s::interval, %(new_run_id)s) AS state

-- name: suspend_run
SELECT @schema.suspend_run(%(run_id)s, %(worker)s, %(wake_at)s::timestamptz) AS ok

-- name: await_event
SELECT * FROM @schema.await_event(%(run_id)s, %(worker)s, %(queue)s, %(event)s, %(step)s,
    %(timeout)s::interval)

-- name: emit_event
SELECT @schema.deliver_event(%(queue)s, %(event)s, %(payload)s::jsonb) AS woken

-- name: release_run
SELECT @schema.release_run(%(run_id)s, %(worker)s) AS ok

-- name: cancel_task
SELECT @schema.cancel_task(%(task_id)s, %(reason)s) AS cancelled

-- name: expired_runs
SELECT r.run_id, r.task_id, r.attempt, t.max_attempts, t.retry::text AS retry,
    r.task_name, r.queue
FROM @schema.runs r JOIN @schema.tasks t USING (task_id)
WHERE r.queue = ANY (%(queues)s::text[]) AND r.state = 'running'
  AND r.lease_expires_at <= @schema.clock_now()
ORDER BY r.lease_expires_at
LIMIT %(limit)s

-- name: enforce_deadlines
-- Cancel tasks past a CancellationPolicy deadline (see the function): how many.
SELECT @schema.enforce_deadlines(%(limit)s) AS cancelled

-- name: next_due
-- One index probe (runs_due) per queue: "queue = ANY (...)" with min() made the planner
-- scan every pending run (~0.3 s with 1M pending, on each idle wake of each worker).
SELECT extract(epoch FROM min(d.available_at) - @schema.clock_now())::float8 AS seconds
FROM unnest(%(queues)s::text[]) AS q(queue)
CROSS JOIN LATERAL (
    SELECT r.available_at FROM @schema.runs r
    WHERE r.queue = q.queue AND r.state IN ('pending', 'sleeping')
      AND r.task_name = ANY (%(names)s::text[])
      AND r.available_at < 'infinity'  -- untimed event waits: woken by the emit, never due
      -- A worker with a version: runs it may claim (see claim_runs), or it would spin.
      AND (%(version)s::text IS NULL OR EXISTS (
          SELECT 1 FROM @schema.tasks v WHERE v.task_id = r.task_id
            AND (v.version = %(version)s OR v.first_started_at IS NULL)))
    ORDER BY r.available_at
    LIMIT 1
) AS d

-- name: get_task
-- next_attempt_at: when a retry (a pending run after the first) is due.
SELECT t.task_id, t.queue, t.task_name, t.params, t.headers, t.state, t.attempts,
    t.max_attempts, t.priority, t.parent_task_id, t.root_task_id, t.last_run_id, t.result,
    t.error, t.cancel_reason, t.created_at, t.first_started_at, t.finished_at,
    CASE WHEN r.state = 'pending' AND r.attempt > 1 THEN r.available_at END
        AS next_attempt_at
FROM @schema.tasks t LEFT JOIN @schema.runs r ON r.run_id = t.last_run_id
WHERE t.task_id = %(task_id)s

-- name: task_states
SELECT task_id, state, result, error, cancel_reason FROM @schema.tasks
WHERE task_id = ANY (%(task_ids)s::uuid[])

-- name: now
SELECT @schema.clock_now() AS now

-- name: advance_clock
-- No row when the offset would pass %(max)s (MAX_DURATION): the clock stays in range.
UPDATE @schema.clock SET offset_by = offset_by + %(by)s::interval
WHERE offset_by + %(by)s::interval <= %(max)s::interval
RETURNING offset_by

-- name: claimable_count
SELECT count(*) AS n FROM @schema.runs
WHERE queue = ANY (%(queues)s::text[]) AND state IN ('pending', 'sleeping')
  AND available_at <= @schema.clock_now() AND task_name = ANY (%(names)s::text[])

-- name: cleanup
SELECT * FROM @schema.cleanup(%(finished_before)s::timestamptz,
    %(events_before)s::timestamptz, %(batch)s)
-- name: run_outcomes
-- How runs ended (Worker.run_once's report): each run's state and error, and whether its
-- failure scheduled another attempt (a probe of the (task_id, attempt) unique index).
SELECT r.run_id, r.state, r.error,
    EXISTS (SELECT 1 FROM @schema.runs n
            WHERE n.task_id = r.task_id AND n.attempt = r.attempt + 1) AS retried
FROM @schema.runs r
WHERE r.run_id = ANY (%(runs)s::uuid[])

-- name: register_worker
SELECT @schema.register_worker(%(worker)s, %(host)s, %(pid)s, %(queues)s::text[],
    %(names)s::text[], %(concurrency)s, %(ttl)s::interval)

-- name: unregister_worker
DELETE FROM @schema.workers WHERE worker_id = %(worker)s RETURNING worker_id

-- name: workers
SELECT worker_id, host, pid, queues, task_names, concurrency, started_at, last_seen_at,
    expires_at
FROM @schema.workers WHERE expires_at > @schema.clock_now() ORDER BY started_at, worker_id

-- name: unserved_tasks
SELECT * FROM @schema.unserved_tasks(%(threshold)s::interval)
-- ---------------------------------------------------------------------------------------
-- Inspection and control (Durable.list_tasks, get_task, steps, queue_stats, retry).
-- Optional filters are written "(parameter IS NULL OR ...)": the store runs these
-- statements unprepared, so each is planned with its values and the unused filters fold
-- away. Pages are in task_id order (UUIDv7: creation order); "after" is the keyset
-- cursor.

-- name: list_tasks
-- Driven by tasks: no state filter, or state = completed (the common end state).
SELECT t.task_id, t.queue, t.task_name, t.state, t.attempts, t.max_attempts, t.priority,
    t.parent_task_id, t.cancel_reason, t.created_at, t.first_started_at, t.finished_at
FROM @schema.tasks t
WHERE (%(after)s::uuid IS NULL OR t.task_id > %(after)s::uuid)
  AND (%(state)s::text IS NULL OR t.state = %(state)s::text)
  AND (%(queue)s::text IS NULL OR t.queue = %(queue)s::text)
  AND (%(name)s::text IS NULL OR t.task_name = %(name)s::text)
  AND (%(parent)s::uuid IS NULL OR t.parent_task_id = %(parent)s::uuid)
  AND (%(created_after)s::timestamptz IS NULL OR t.created_at >= %(created_after)s)
  AND (%(created_before)s::timestamptz IS NULL OR t.created_at < %(created_before)s)
  -- Where a creation range starts in task_id order, read off tasks_created (the range's
  -- entries only; OFFSET 0 keeps the walk in task_id order out of this subquery): without
  -- it the walk in task_id order read every older task first.
  AND (%(created_after)s::timestamptz IS NULL OR t.task_id >= (
      SELECT x.task_id FROM (
          SELECT x.task_id FROM @schema.tasks x
          WHERE x.created_at >= %(created_after)s
            AND (%(created_before)s::timestamptz IS NULL OR x.created_at < %(created_before)s)
          OFFSET 0) x
      ORDER BY x.task_id LIMIT 1))
ORDER BY t.task_id
LIMIT %(limit)s

-- part: task_of_last_run
-- The task whose last run is r (a task shares its state with it), filtered as
-- list_tasks_ended and list_tasks_live ask. OFFSET 0 keeps it a per-run probe: flattened
-- into a join, the planner scanned every task for the rare failed ones (50 ms at 200k
-- tasks, not 1 ms).
    SELECT t.task_id, t.queue, t.task_name, t.state, t.attempts, t.max_attempts,
        t.priority, t.parent_task_id, t.cancel_reason, t.created_at, t.first_started_at,
        t.finished_at
    FROM @schema.tasks t
    WHERE t.task_id = r.task_id AND t.last_run_id = r.run_id AND t.state = %(state)s::text
      AND (%(parent)s::uuid IS NULL OR t.parent_task_id = %(parent)s::uuid)
      AND (%(created_after)s::timestamptz IS NULL OR t.created_at >= %(created_after)s)
      AND (%(created_before)s::timestamptz IS NULL OR t.created_at < %(created_before)s)
    OFFSET 0

-- name: list_tasks_ended
-- Failed or cancelled tasks, found through their last run (a task shares its state with
-- it): runs_ended_task is walked in task_id order and the walk stops at a page.
SELECT t.*
FROM @schema.runs r
CROSS JOIN LATERAL (@part(task_of_last_run)) t
WHERE r.state = %(state)s::text
  AND (%(after)s::uuid IS NULL OR r.task_id > %(after)s::uuid)
  AND (%(queue)s::text IS NULL OR r.queue = %(queue)s::text)
  AND (%(name)s::text IS NULL OR r.task_name = %(name)s::text)
ORDER BY r.task_id
LIMIT %(limit)s

-- name: list_tasks_live
-- Pending, sleeping or running tasks, through their last run: the live runs are read off
-- the claim and lease indexes and sorted (O(backlog)), then only a page of them is looked
-- up. Walked in task_id order instead, the planner read the finished runs before the
-- live ones, which are the newest.
WITH live AS MATERIALIZED (
    SELECT r.task_id, r.run_id FROM @schema.runs r
    WHERE r.state = %(state)s::text
      AND (%(after)s::uuid IS NULL OR r.task_id > %(after)s::uuid)
      AND (%(queue)s::text IS NULL OR r.queue = %(queue)s::text)
      AND (%(name)s::text IS NULL OR r.task_name = %(name)s::text)
)
SELECT t.*
FROM (SELECT * FROM live ORDER BY live.task_id) r
CROSS JOIN LATERAL (@part(task_of_last_run)) t
ORDER BY r.task_id
LIMIT %(limit)s

-- name: task_runs
-- available_at NULL: a run suspended on a wait without timeout ('infinity' in the table).
SELECT run_id, attempt, state, worker_id, wake_reason, error, created_at,
    nullif(available_at, 'infinity') AS available_at, claimed_at, lease_expires_at,
    finished_at
FROM @schema.runs WHERE task_id = %(task_id)s ORDER BY attempt

-- name: task_wait
SELECT queue, event_name, step_name, timeout_at FROM @schema.waits
WHERE task_id = %(task_id)s

-- name: task_children
-- The first children by id, and how many there are.
SELECT c.task_id, c.task_name, c.state, count(*) OVER () AS total
FROM @schema.tasks c WHERE c.parent_task_id = %(task_id)s
ORDER BY c.task_id LIMIT %(limit)s

-- name: task_steps
-- One row with NULL name for a task without checkpoints; none for a missing task.
SELECT k.name, k.value, k.run_id, r.attempt, k.created_at
FROM @schema.tasks t
LEFT JOIN @schema.checkpoints k ON k.task_id = t.task_id
LEFT JOIN @schema.runs r ON r.run_id = k.run_id
WHERE t.task_id = %(task_id)s
ORDER BY k.created_at, k.name

-- name: queue_live
-- Live runs per queue and task name: the claim and lease indexes only (O(backlog)). A
-- name with runs due for longer than "unserved_after" is then looked up once in the
-- workers registry (a few rows): if no live worker of its queue has registered it, those
-- runs are unserved (the same rule as unserved_tasks).
SELECT g.queue, g.task_name, g.pending, g.sleeping, g.running, g.due_now, g.oldest_due_age,
    CASE WHEN g.stale = 0 OR w.served THEN 0 ELSE g.stale END AS unserved_runs,
    CASE WHEN g.stale = 0 OR w.served THEN NULL ELSE g.oldest_due_age END
        AS oldest_unserved_age
FROM (
    -- clock_now() reads clock_timestamp(), so n.now is not one value to group by.
    SELECT r.queue, r.task_name, max(n.now) AS now,
        count(*) FILTER (WHERE r.state = 'pending') AS pending,
        count(*) FILTER (WHERE r.state = 'sleeping') AS sleeping,
        count(*) FILTER (WHERE r.state = 'running') AS running,
        count(*) FILTER (WHERE r.state <> 'running' AND r.available_at <= n.now) AS due_now,
        max(n.now - r.available_at)
            FILTER (WHERE r.state <> 'running' AND r.available_at <= n.now) AS oldest_due_age,
        count(*) FILTER (WHERE r.state <> 'running'
            AND r.available_at <= n.now - %(unserved_after)s::interval) AS stale
    FROM (SELECT @schema.clock_now() AS now) n
    CROSS JOIN LATERAL (
        SELECT x.queue, x.task_name, x.state, x.available_at FROM @schema.runs x
        WHERE x.state IN ('pending', 'sleeping')
          AND (%(queue)s::text IS NULL OR x.queue = %(queue)s::text)
        UNION ALL
        SELECT x.queue, x.task_name, x.state, x.available_at FROM @schema.runs x
        WHERE x.state = 'running' AND (%(queue)s::text IS NULL OR x.queue = %(queue)s::text)
    ) r
    GROUP BY r.queue, r.task_name
) g
CROSS JOIN LATERAL (
    SELECT g.stale > 0 AND EXISTS (
        SELECT 1 FROM @schema.workers k
        WHERE k.expires_at > g.now AND g.queue = ANY (k.queues)
          AND g.task_name = ANY (k.task_names)) AS served
) w

-- name: queue_ended
-- Attempts that failed, and tasks that failed or were cancelled, in the last "window"
-- (runs_ended_at: O(ends in the window)).
SELECT r.queue, r.task_name,
    count(*) FILTER (WHERE r.state = 'failed') AS failed_attempts,
    count(*) FILTER (WHERE r.state = 'failed' AND t.state = 'failed'
        AND r.run_id = t.last_run_id) AS failed,
    count(*) FILTER (WHERE r.state = 'cancelled' AND t.state = 'cancelled'
        AND r.run_id = t.last_run_id) AS cancelled
FROM @schema.runs r
JOIN @schema.tasks t ON t.task_id = r.task_id
WHERE r.state IN ('failed', 'cancelled')
  AND r.finished_at >= @schema.clock_now() - %(window)s::interval
  AND (%(queue)s::text IS NULL OR r.queue = %(queue)s::text)
GROUP BY r.queue, r.task_name

-- name: retry_task
SELECT * FROM @schema.retry_task(%(task_id)s, %(run_id)s, %(max_attempts)s,
    %(from_scratch)s)
-- ---------------------------------------------------------------------------------------
-- Schedules (sql/migrations/0005_schedules.sql, sql/functions/fire_schedule.sql).

-- name: put_schedule
-- Create or replace a schedule. Its first slot (next_fire_at, the caller's first slot
-- after now) applies to a new schedule, and to one whose cron or timezone changed;
-- otherwise the slot it was waiting for stays, so re-declaring a schedule at each deploy
-- neither skips nor repeats a slot. Paused stays paused. The spawn settings are stored
-- as the SQL API's options (spawn_options), refused now if spawn would refuse them at a
-- slot. Returns whether the row is new.
INSERT INTO @schema.schedules AS s (schedule_id, queue, task_name, params, options, cron,
    timezone, missed, next_fire_at, created_at, updated_at)
SELECT %(schedule_id)s, %(queue)s, %(task_name)s, %(params)s::jsonb, o.options, %(cron)s,
    %(timezone)s, %(missed)s, %(next_fire_at)s::timestamptz, @schema.clock_now(),
    @schema.clock_now()
FROM (SELECT @schema.spawn_options(%(headers)s::jsonb, %(retry)s::jsonb, %(max_attempts)s,
        %(priority)s, %(max_pending_delay)s::interval, %(max_duration)s::interval) AS options
    ) o,
    -- What spawn will check when the schedule fires, checked now (raises when refused).
    LATERAL @schema.spawn_settings(%(queue)s, %(task_name)s, %(params)s::jsonb, o.options)
ON CONFLICT (schedule_id) DO UPDATE SET queue = EXCLUDED.queue,
    task_name = EXCLUDED.task_name, params = EXCLUDED.params, options = EXCLUDED.options,
    cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, missed = EXCLUDED.missed,
    next_fire_at = CASE WHEN s.cron = EXCLUDED.cron AND s.timezone = EXCLUDED.timezone
        THEN s.next_fire_at ELSE EXCLUDED.next_fire_at END,
    updated_at = EXCLUDED.updated_at
RETURNING (xmax = 0) AS created

-- name: delete_schedule
DELETE FROM @schema.schedules WHERE schedule_id = %(schedule_id)s RETURNING schedule_id

-- part: schedule_info
-- What ScheduleInfo shows of a schedule.
SELECT schedule_id, queue, task_name, params, options -> 'headers' AS headers, cron,
    timezone, missed, paused, next_fire_at, last_fired_at, last_task_id, created_at,
    updated_at
FROM @schema.schedules

-- name: list_schedules
@part(schedule_info) ORDER BY schedule_id

-- name: get_schedule
@part(schedule_info) WHERE schedule_id = %(schedule_id)s

-- name: pause_schedule
-- Whether it was running (a paused schedule is left as it is).
UPDATE @schema.schedules SET paused = true, updated_at = @schema.clock_now()
WHERE schedule_id = %(schedule_id)s AND NOT paused RETURNING schedule_id

-- name: resume_schedule
-- Resume from the first slot after now (next_fire_at), computed by the caller for this
-- cron and timezone: nothing is written if the schedule changed meanwhile (the caller reads again).
UPDATE @schema.schedules SET paused = false, next_fire_at = %(next_fire_at)s::timestamptz,
    updated_at = @schema.clock_now()
WHERE schedule_id = %(schedule_id)s AND paused AND cron = %(cron)s
  AND timezone = %(timezone)s
RETURNING schedule_id

-- name: due_schedules
-- A page of the schedules a worker's pass fires now, with the database's time: those
-- after (after_at, after_id) in (next_fire_at, schedule_id) order, so that a pass goes
-- on past schedules it cannot fire instead of reading them again at the head.
SELECT schedule_id, cron, timezone, missed, next_fire_at, updated_at,
    @schema.clock_now() AS now
FROM @schema.schedules
WHERE NOT paused AND next_fire_at <= @schema.clock_now()
  AND next_fire_at >= %(after_at)s::timestamptz
  AND (next_fire_at, schedule_id) > (%(after_at)s::timestamptz, %(after_id)s::text)
ORDER BY next_fire_at, schedule_id
LIMIT %(limit)s

-- name: schedule_to_fire
-- In fire_schedule's transaction, when a before_spawn hook is to give each slot's task
-- headers: the due schedule's row locked, and what the hook is told of it (no row:
-- another worker holds it or moved it on, or it changed). The hook runs only for slots
-- this transaction will spawn, not for those another worker fires.
SELECT queue, task_name, coalesce(options -> 'headers', '{}') AS headers
FROM @schema.schedules
WHERE schedule_id = %(schedule_id)s AND NOT paused AND next_fire_at = %(due)s::timestamptz
FOR UPDATE SKIP LOCKED

-- name: fire_schedule
-- See the function: how many tasks were created, NULL if another worker fired it first.
SELECT @schema.fire_schedule(%(schedule_id)s, %(due)s::timestamptz, %(keys)s::text[],
    %(slots)s::text[], %(tasks)s::uuid[], %(runs)s::uuid[],
    %(next_fire_at)s::timestamptz, %(headers)s::jsonb) AS created
