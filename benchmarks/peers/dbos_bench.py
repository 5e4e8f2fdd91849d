"""DBOS peer: a @DBOS.workflow calling one @DBOS.step (a checkpointed one-step workflow),
run through a DBOS queue with worker_concurrency=C. Workflows are enqueued with DBOSClient
before the worker process launches. DBOS queues find work by polling (no LISTEN/NOTIFY for
queues); the default 1 s queue polling interval would cap throughput at about C per
second, so polling_interval_sec is set to 0.01 (recorded in the report).
Completions: dbos.workflow_status rows with status 'SUCCESS'. The queue is registered
after DBOS.launch() (it must be), and DBOS's queue manager notices a new queue within about
a second, so the reported rate uses the database's own timestamps: completions divided by
(last completed_at - first started_at_epoch_ms). The wall-clock rate is reported too."""

from __future__ import annotations

import threading
import time

from _peer_common import count, parse_args, report, wait_count
from dbos import DBOS, DBOSClient, DBOSConfig, run_dbos_database_migrations

DONE = "SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS' AND queue_name = 'bench'"
POLL = 0.01


@DBOS.step()
def work(x: int) -> int:
    return x + 1


@DBOS.workflow()
def one_step(x: int) -> int:
    return work(x)


def main() -> None:
    args = parse_args()
    run_dbos_database_migrations(args.url)
    client = DBOSClient(system_database_url=args.url)
    for i in range(args.n):
        client.enqueue({"queue_name": "bench", "workflow_name": "one_step"}, i)
    client.destroy()
    pool = min(args.concurrency, 32) + 8
    config: DBOSConfig = {
        "name": "bench",
        "system_database_url": args.url,
        "sys_db_pool_size": pool,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    t0 = time.perf_counter()
    DBOS.launch()
    launch = time.perf_counter() - t0
    DBOS.register_queue("bench", worker_concurrency=args.concurrency, polling_interval_sec=POLL)
    done = wait_count(args.url, DONE, args.n, args.timeout)
    wall = time.perf_counter() - t0
    span_ms = count(
        args.url,
        "SELECT max(completed_at) - min(started_at_epoch_ms) FROM dbos.workflow_status "
        "WHERE status = 'SUCCESS' AND queue_name = 'bench'",
    )
    seconds = span_ms / 1000 if done >= args.n and span_ms > 0 else wall
    report(
        "dbos",
        "dbos",
        args,
        done,
        seconds,
        wall_seconds=wall,
        wall_tasks_per_s=done / wall,
        launch_seconds=launch,
        queue_polling_interval_sec=POLL,
        sys_db_pool_size=pool,
    )
    threading.Thread(target=DBOS.destroy, daemon=True).start()
    time.sleep(1)


if __name__ == "__main__":
    main()
