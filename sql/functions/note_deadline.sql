-- The trigger's argument is the kind of deadline to note.
CREATE OR REPLACE FUNCTION @schema.note_deadline() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO @schema.deadlines (task_id, kind, due_at)
    VALUES (NEW.task_id, TG_ARGV[0], CASE TG_ARGV[0]
        WHEN 'max_pending_delay' THEN @schema.bounded_add(NEW.created_at, NEW.max_pending_delay)
        ELSE @schema.bounded_add(NEW.first_started_at, NEW.max_duration) END)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
