-- durable_trio schema, version 7: the code version a task runs under.
--
-- A worker started with WorkerOptions(version=...) stamps its version on each task whose
-- first run it claims, and claims only tasks that never ran or carry its version: a
-- deploy whose code would not replay the checkpoints of tasks already in flight leaves
-- them to workers still running the old code (see docs/versioning.md). NULL: the task
-- has not run yet, or first ran on a worker without a version; those claim anything.
ALTER TABLE @schema.tasks ADD COLUMN version text;
