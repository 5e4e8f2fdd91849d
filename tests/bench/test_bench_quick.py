"""The benchmark harness runs end to end (quick mode, tiny counts, raw + durable_trio) and
writes its JSON report with every section, the limit scenarios included. No timing is
asserted: this proves the harness works, not how fast anything is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


def test_quick_run_writes_results(pg_url: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--quick",
            "--systems",
            "raw",
            "durable_trio",
            "--scale",
            "0.1",
            "--results-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DURABLE_BENCH_DATABASE_URL": pg_url},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "performance target" in done.stdout

    latest = json.loads((tmp_path / "latest-quick.json").read_text())
    stamped = [p for p in tmp_path.glob("*-quick.json") if p.name != "latest-quick.json"]
    assert len(stamped) == 1
    assert json.loads(stamped[0].read_text()) == latest

    assert latest["errors"] == {}
    assert latest["meta"]["mode"] == "quick"
    assert {"server", "sizes", "durable_trio_version"} <= set(latest["meta"])
    concurrency = [str(c) for c in latest["meta"]["sizes"]["concurrency"]]
    for system in ("raw", "durable_trio", "raw_zero_step", "durable_trio_zero_step"):
        by_conc = latest["throughput"][system]
        assert sorted(by_conc) == sorted(concurrency)
        for cell in by_conc.values():
            # every task was counted as completed in the database
            assert cell["completed_in_db"] == cell["n"]
            assert cell["tasks_per_s"] > 0
    for system in ("raw", "durable_trio"):
        assert (
            latest["two_process"][system]["completed_in_db"] == latest["two_process"][system]["n"]
        )
        assert latest["spawn_rate"][system]["batch_per_s"] > 0
        backlog = latest["claim_backlog"][system]
        assert len(backlog) == 2
        assert all(v["completed_in_db"] > 0 for v in backlog.values())
    spawn = latest["latency"]["spawn_to_start"]
    assert {"raw", "durable_trio", "durable_trio_poll_only"} <= set(spawn)
    assert spawn["durable_trio"]["n"] == latest["meta"]["sizes"]["latency_samples"]
    assert spawn["durable_trio"]["p50_ms"] <= spawn["durable_trio"]["p99_ms"]
    assert latest["latency"]["emit_to_resume"]["durable_trio"]["n"] > 0
    assert {"durable_trio_step", "raw_insert"} <= set(latest["latency"]["checkpoint"])
    fanout = latest["fanout"]["durable_trio"]
    assert fanout["children"] == latest["meta"]["sizes"]["fanout"]
    rss = latest["rss"]["durable_trio"]
    assert rss["in_flight"] == latest["meta"]["sizes"]["rss_tasks"]
    assert rss["rss_mb_loaded"] > 0
    for conc, node in latest["ceiling"].items():
        assert node["concurrency"] == int(conc)
        for name, cell in node["runs"].items():
            assert cell["completed_in_db"] > 0, name
            assert cell["cost"]["commits"] > 0, name
        assert node["best"] in node["runs"]
        assert node["durable_trio_fraction"] > 0
    work = latest["server_work"]["durable_trio"]
    assert "runs" in work["indexes"]
    for conc in (str(c) for c in latest["meta"]["sizes"]["server_work_concurrency"]):
        tables = work[conc]["tables"]
        # every task completed: one checkpoint inserted per task, its run updated
        assert tables["checkpoints"]["ins_per_task"] == 1
        assert tables["runs"]["upd_per_task"] >= 2
    scale = latest["scale"]["durable_trio"]
    for k in latest["meta"]["sizes"]["scale_processes"]:
        assert scale[str(k)]["completed_in_db"] == scale[str(k)]["n"]
    for size, cell in latest["retained"]["durable_trio"].items():
        assert cell["completed_in_db"] == cell["n"], size
        assert cell["load"]["retained"] == int(size)
    for cell in latest["otel_overhead"].values():
        assert cell["ratio"] > 0
        # The hooks were on: a run span and a step span for every task of each hooked drain.
        assert cell["spans_exported"] >= 2 * cell["n"] * cell["rounds"]
    assert latest["peers"] == {}
    names = [t["target"] for t in latest["targets"]]
    assert len(names) >= 10
    assert len(set(names)) == len(names)
    assert all({"target", "measured", "met"} <= set(t) for t in latest["targets"])
    plots = latest["plots"]
    if isinstance(plots, list):  # matplotlib installed
        assert sorted(plots) == ["latency-quick.png", "throughput-quick.png"]
        assert all((tmp_path / name).stat().st_size > 0 for name in plots)
