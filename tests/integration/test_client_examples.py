"""The client examples run as written: a blocking view and an asyncio endpoint each insert
an order and spawn its workflow in one transaction; a trio worker process runs them."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import durable_trio.sync

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clients"


def run(script: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, script],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_sync_view_and_asyncio_endpoint_feed_a_trio_worker(pg_url: str, schema: str) -> None:
    env = {**os.environ, "DURABLE_DATABASE_URL": pg_url, "SHOP_SCHEMA": schema}
    with durable_trio.sync.Durable.connect(pg_url, schema=schema) as client:
        worker = subprocess.Popen(
            [sys.executable, "-m", "durable_trio", "--schema", schema, "worker", "shop:setup"],
            cwd=EXAMPLES,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            from_view = ast.literal_eval(run("sync_view.py", env).strip())
            placed, result = run("asyncio_endpoint.py", env).strip().splitlines()
            from_endpoint = ast.literal_eval(placed)
            assert result == f"2 x kettle reserved; label for order {from_endpoint['order_id']}"
            done = client.wait_result(None, from_view["task_id"], timeout=60)
            assert done == f"1 x teapot reserved; label for order {from_view['order_id']}"
        finally:
            worker.send_signal(signal.SIGTERM)
            out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0, out
        for placed_order in (from_view, from_endpoint):
            info = client.get_task(placed_order["task_id"])
            assert info.state.value == "completed"
            assert info.params["order_id"] == placed_order["order_id"]
