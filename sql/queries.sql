-- Named queries, loaded by src/durable_trio/_store.py. "@schema" is the quoted schema.
-- Values are always parameters; nothing else is spliced in.

-- name: spawn_task
SELECT * FROM @schema.spawn_task(%(task_id)s, %(run_id)s, %(queue)s, %(task_name)s,
    %(params)s::jsonb, %(headers)s::jsonb, %(retry)s::jsonb, %(max_attempts)s,
    %(priority)s, %(delay)s::interval, %(start_at)s::timestamptz, %(idempotency_key)s,
    %(max_pending_delay)s::interval, %(max_duration)s::interval, %(parent)s::uuid)

-- name: spawn_tasks
SELECT * FROM @schema.spawn_tasks(%(task_id)s::uuid[], %(run_id)s::uuid[],
    %(params)s::text[], %(queue)s, %(task_name)s, %(headers)s::jsonb, %(retry)s::jsonb,
    %(max_attempts)s, %(priority)s, %(delay)s::interval, %(start_at)s::timestamptz,
    %(idempotency_key)s, %(max_pending_delay)s::interval, %(max_duration)s::interval)

-- name: claim_runs
SELECT * FROM @schema.claim_runs(%(queue)s, %(worker)s, %(names)s::text[], %(limit)s,
    %(lease)s::interval)

-- name: claim_runs_singly
SELECT * FROM @schema.claim_runs_singly(%(queue)s, %(worker)s, %(names)s::text[],
    %(limit)s, %(lease)s::interval)

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
    %(limit)s, %(lease)s::interval) AS c ON true

-- name: record_and_claim
-- A worker's group commit and the claim of its free slots, in one round trip and one
-- transaction: the writes first, then the claim (see claim_runs). Every row carries the
-- runs the writes found owned; a row of NULL claim columns means nothing was claimed.
WITH rec AS MATERIALIZED (
    SELECT @schema.record_runs(%(worker)s, %(writes)s::jsonb) AS owned
)
SELECT rec.owned, c.*
FROM rec LEFT JOIN LATERAL @schema.claim_runs(%(queue)s, %(worker)s, %(names)s::text[],
    %(limit)s, %(lease)s::interval) AS c ON true

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
SELECT r.run_id, r.task_id, r.attempt, t.max_attempts, t.retry::text AS retry
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
    ORDER BY r.available_at
    LIMIT 1
) AS d

-- name: get_task
SELECT task_id, queue, task_name, params, headers, state, attempts, max_attempts, priority,
    parent_task_id, root_task_id, last_run_id, result, error, cancel_reason, created_at,
    first_started_at, finished_at
FROM @schema.tasks WHERE task_id = %(task_id)s

-- name: task_states
SELECT task_id, state, result, error, cancel_reason FROM @schema.tasks
WHERE task_id = ANY (%(task_ids)s::uuid[])

-- name: now
SELECT @schema.clock_now() AS now

-- name: advance_clock
UPDATE @schema.clock SET offset_by = offset_by + %(by)s::interval RETURNING offset_by

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
