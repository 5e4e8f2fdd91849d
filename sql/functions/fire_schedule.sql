-- Spawn the given slots of one schedule (through spawn, the SQL API, with the options
-- the schedule stores) and move it on to p_next, in one transaction: only if the
-- schedule is not paused and still due at p_due (else another worker fired it already,
-- or it was changed meanwhile: nothing is written and NULL is returned).
-- A worker holding the row skips it (SKIP LOCKED) instead of queueing behind it: that
-- worker either commits the slots or leaves them due for the next pass. Each slot is
-- spawned with its idempotency key (p_keys), so even a slot spawned before (the schedule
-- was re-created, say) is not spawned twice; its task gets the schedule's headers, then
-- p_headers' object for that slot over them (a JSON array, one object per slot: what the
-- firing worker's before_spawn hook returned; NULL without a hook), then 'schedule_id'
-- and 'scheduled_at' (p_slots, the slot as ISO text). p_tasks and p_runs are the new ids.
-- Returns how many tasks were created.
CREATE OR REPLACE FUNCTION @schema.fire_schedule(
    p_id text, p_due timestamptz, p_keys text[], p_slots text[], p_tasks uuid[],
    p_runs uuid[], p_next timestamptz, p_headers jsonb
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    s record;
    v_created integer := 0;
    v_last uuid;
    v_spawned record;
BEGIN
    SELECT * INTO s FROM @schema.schedules
    WHERE schedule_id = p_id FOR UPDATE SKIP LOCKED;
    IF NOT FOUND OR s.paused OR s.next_fire_at <> p_due THEN
        RETURN NULL;
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        -- A key already used returns its task, not the id given: that slot made nothing.
        SELECT * INTO v_spawned FROM @schema.spawn(s.queue, s.task_name, s.params,
            s.options || jsonb_build_object(
                'headers', coalesce(s.options -> 'headers', '{}')
                    || coalesce(p_headers -> (i - 1), '{}')
                    || jsonb_build_object('schedule_id', s.schedule_id,
                        'scheduled_at', p_slots[i]),
                'idempotency_key', p_keys[i], 'task_id', p_tasks[i], 'run_id', p_runs[i]));
        v_last := v_spawned.task_id;
        v_created := v_created + (v_spawned.task_id = p_tasks[i])::integer;
    END LOOP;
    UPDATE @schema.schedules SET next_fire_at = p_next,
        last_fired_at = coalesce(p_slots[array_length(p_slots, 1)]::timestamptz,
            last_fired_at),
        last_task_id = coalesce(v_last, last_task_id)
    WHERE schedule_id = p_id;
    RETURN v_created;
END
$$;
