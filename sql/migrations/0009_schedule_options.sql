-- durable_trio schema, version 9: a schedule's spawn settings as one JSON object.
--
-- A schema that applied 0005_schedules.sql before version 9 keeps them in the columns
-- headers, retry, max_attempts, priority, max_pending_delay and max_duration; they
-- become `options` (spawn_options: the SQL API's shape), which fire_schedule hands to
-- spawn. A schema made since has `options` from 0005 already, and nothing changes.
DO $$
BEGIN
    -- pg_attribute, not information_schema: it lists columns whatever the role's rights.
    IF EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = to_regclass(format('%I.schedules', @schema_literal))
                 AND attname = 'retry' AND NOT attisdropped) THEN
        ALTER TABLE @schema.schedules ADD COLUMN options jsonb;
        UPDATE @schema.schedules SET options = @schema.spawn_options(headers, retry,
            max_attempts, priority, max_pending_delay, max_duration);
        ALTER TABLE @schema.schedules ALTER COLUMN options SET NOT NULL,
            DROP COLUMN headers, DROP COLUMN retry, DROP COLUMN max_attempts,
            DROP COLUMN priority, DROP COLUMN max_pending_delay, DROP COLUMN max_duration;
    END IF;
END
$$;
