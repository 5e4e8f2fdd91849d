"""durable_trio benchmarks: one run, one Postgres, every system side by side.

    python benchmarks/run.py                 # the full run (peers included), ~15-25 min
    python benchmarks/run.py --quick         # small numbers, no peers unless named: < 2 min
    python benchmarks/run.py --systems raw durable_trio pgqueuer --scenarios throughput

Starts ONE throwaway PostgreSQL (durable_trio._ephemeral, TCP, default durability: fsync
and synchronous_commit on) unless DURABLE_BENCH_DATABASE_URL names a server (the role
needs CREATEDB: each system gets its own database, dropped afterwards). Every count of
finished work is read from the database. Writes JSON to benchmarks/results/<timestamp>.json
and latest.json (``-quick`` suffixed in quick mode, so a smoke run never replaces the
published full results) and PNG plots beside them; prints tables with ratios to the
raw-SQL ceiling. A scenario or peer that fails is recorded with its error; the run goes on.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import trio  # noqa: E402

import clients_bench  # noqa: E402
import dt_bench  # noqa: E402
import limits  # noqa: E402
import peer_runner  # noqa: E402
import raw_ceiling  # noqa: E402
import report  # noqa: E402
from _util import server_settings, temporary_database  # noqa: E402

URL_ENV = "DURABLE_BENCH_DATABASE_URL"
SYSTEMS = ["raw", "durable_trio", "procrastinate", "pgqueuer", "dbos", "absurd"]
PEERS = ["procrastinate", "pgqueuer", "dbos", "absurd"]
SCENARIOS = [
    "throughput",
    "two_process",
    "spawn_latency",
    "emit_latency",
    "fanout",
    "checkpoint",
    "spawn_rate",
    "client_spawn",
    "backlog",
    "retention",
    "rss",
    "ceiling",
    "server_work",
    "scale",
    "retained",
    "otel_overhead",
]
BENCH_DB = "durable_trio_bench"


@dataclass(frozen=True)
class Sizes:
    concurrency: list[int]
    n_c1: int  # tasks per throughput run at concurrency 1
    n: int  # tasks per throughput run at higher concurrency
    run_timeout: float  # a throughput run stops here and reports the rate so far
    two_proc_n: int
    two_proc_c: int
    latency_samples: int
    poll_samples: int
    emit_samples: int
    fanout: int
    checkpoint_steps: int
    spawn_single: int
    spawn_batch: int
    backlog: list[int] = field(default_factory=list)
    backlog_window: float = 10.0
    backlog_c: int = 32
    rss_tasks: int = 1000
    ceiling_concurrency: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    ceiling_window: float = 3.0  # seconds of each pgbench run
    server_work_concurrency: list[int] = field(default_factory=lambda: [1, 32])
    scale_processes: list[int] = field(default_factory=lambda: [1, 2, 4])
    scale_n: int = 10000
    scale_c: int = 32
    retained: list[int] = field(default_factory=lambda: [0, 10_000_000])
    retained_load_budget: float = 360.0  # seconds; loading stops there, the size is said
    retained_c: int = 32
    retention_finished: int = 1_000_000  # old finished tasks the cleanup removes
    retention_pending: int = 800_000  # the backlog drained meanwhile (must outlast it)
    retention_window: float = 5.0  # seconds of no cleanup between two cleanups
    retention_batch: int = 1000  # Durable.cleanup's default
    retention_slices: int = 10  # cleanups, each removing the next slice of the tasks
    retention_duties: tuple[float, ...] = (1.0, 0.2)  # Durable.cleanup(duty=), in turn
    otel_n: int = 2000  # tasks per run of the OpenTelemetry overhead pairs
    otel_rounds: int = 3  # rounds (hooks off, on, 10% sampled) per concurrency

    def scaled(self, k: float) -> Sizes:
        if k == 1:
            return self

        def s(v: int, low: int = 3) -> int:
            return max(low, int(v * k))

        return replace(
            self,
            n_c1=s(self.n_c1, 10),
            n=s(self.n, 10),
            two_proc_n=s(self.two_proc_n, 10),
            latency_samples=s(self.latency_samples),
            poll_samples=s(self.poll_samples, 1),
            emit_samples=s(self.emit_samples),
            fanout=s(self.fanout),
            checkpoint_steps=s(self.checkpoint_steps, 5),
            spawn_single=s(self.spawn_single, 5),
            spawn_batch=s(self.spawn_batch, 10),
            backlog=[s(b, 20) for b in self.backlog],
            backlog_window=max(0.5, self.backlog_window * k),
            rss_tasks=s(self.rss_tasks, 10),
            ceiling_window=max(1.0, self.ceiling_window * k),
            scale_n=s(self.scale_n, 10),
            retained=[s(r, 100) if r else 0 for r in self.retained],
            retention_finished=s(self.retention_finished, 100),
            retention_pending=s(self.retention_pending, 100),
            otel_n=s(self.otel_n, 10),
        )


FULL = Sizes(
    concurrency=[1, 8, 32, 64],
    n_c1=1000,
    n=5000,
    run_timeout=150,
    two_proc_n=10000,
    two_proc_c=32,
    latency_samples=500,
    poll_samples=20,
    emit_samples=300,
    fanout=1000,
    checkpoint_steps=1000,
    spawn_single=2000,
    spawn_batch=20000,
    backlog=[10_000, 1_000_000],
    backlog_window=5.0,
    backlog_c=32,
    rss_tasks=1000,
)
QUICK = Sizes(
    concurrency=[1, 8, 64],
    n_c1=100,
    n=300,
    run_timeout=30,
    two_proc_n=300,
    two_proc_c=8,
    latency_samples=30,
    poll_samples=2,
    emit_samples=20,
    fanout=50,
    checkpoint_steps=100,
    spawn_single=100,
    spawn_batch=1000,
    backlog=[1_000, 10_000],
    backlog_window=2.0,
    backlog_c=32,
    rss_tasks=200,
    ceiling_concurrency=[1, 32],
    ceiling_window=1.0,
    scale_n=600,
    retained=[0, 100_000],
    retained_load_budget=30.0,
    retention_finished=50_000,
    retention_pending=60_000,
    retention_window=2.0,
    retention_slices=4,
    otel_n=300,
    otel_rounds=2,
)


class Progress:
    """tqdm when it is installed, else one line per unit on stderr."""

    def __init__(self, total: int) -> None:
        try:
            from tqdm import tqdm

            self._bar: Any = tqdm(total=total, unit="step", dynamic_ncols=True)
        except ImportError:
            self._bar = None
        self.total = total
        self.done = 0

    def start(self, label: str) -> None:
        if self._bar is not None:
            self._bar.set_description(label)
        else:
            print(f"[{self.done + 1}/{self.total}] {label}", file=sys.stderr, flush=True)

    def advance(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _put(results: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = results
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _trio(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return trio.run(functools.partial(fn, *args, **kwargs))


Unit = tuple[str, tuple[str, ...], Callable[[], Any]]


def plan(url: str, systems: list[str], scenarios: list[str], sz: Sizes) -> list[Unit]:
    """(label, where the result goes, thunk) for every unit of work, in run order."""
    units: list[Unit] = []
    has_raw, has_dt = "raw" in systems, "durable_trio" in systems

    def add(
        label: str, path: tuple[str, ...], fn: Callable[..., Any], *args: Any, **kw: Any
    ) -> None:
        units.append((label, path, functools.partial(fn, url, *args, **kw)))

    def add_trio(
        label: str, path: tuple[str, ...], fn: Callable[..., Any], *args: Any, **kw: Any
    ) -> None:
        units.append((label, path, functools.partial(_trio, fn, url, *args, **kw)))

    def n_for(c: int) -> int:
        return sz.n_c1 if c == 1 else sz.n

    if "throughput" in scenarios:
        for c in sz.concurrency:
            n, t, key = n_for(c), sz.run_timeout, str(c)
            if has_raw:
                add(
                    f"raw 1-step c={c}",
                    ("throughput", "raw", key),
                    raw_ceiling.drain,
                    "raw_tp",
                    n,
                    c,
                    timeout=t,
                )
                add(
                    f"raw 0-step c={c}",
                    ("throughput", "raw_zero_step", key),
                    raw_ceiling.drain,
                    "raw_tp",
                    n,
                    c,
                    zero_step=True,
                    timeout=t,
                )
            if has_dt:
                add_trio(
                    f"durable_trio 1-step c={c}",
                    ("throughput", "durable_trio", key),
                    dt_bench.drain,
                    "dt_tp",
                    "one_step",
                    n,
                    c,
                    timeout=t,
                )
                if c == 1:  # the claim round trip between short tasks, hidden
                    add_trio(
                        f"durable_trio 1-step c={c} prefetch={report.PREFETCH}",
                        ("throughput", "durable_trio_prefetch", key),
                        dt_bench.drain,
                        "dt_tp",
                        "one_step",
                        n,
                        c,
                        prefetch=report.PREFETCH,
                        timeout=t,
                    )
                add_trio(
                    f"durable_trio 0-step c={c}",
                    ("throughput", "durable_trio_zero_step", key),
                    dt_bench.drain,
                    "dt_tp",
                    "zero_step",
                    n,
                    c,
                    timeout=t,
                )
        for peer in PEERS:
            if peer not in systems:
                continue
            for c in sz.concurrency:
                units.append(
                    (
                        f"{peer} c={c}",
                        ("throughput", peer, str(c)),
                        functools.partial(
                            peer_runner.run_peer, peer, url, c, n_for(c), sz.run_timeout
                        ),
                    )
                )
    if "two_process" in scenarios:
        n, c = sz.two_proc_n, sz.two_proc_c
        if has_raw:
            add(
                "raw 2 processes",
                ("two_process", "raw"),
                raw_ceiling.run_two_processes,
                "raw_2p",
                n,
                c,
            )
        if has_dt:
            add(
                "durable_trio 2 processes",
                ("two_process", "durable_trio"),
                dt_bench.run_two_processes,
                "dt_2p",
                "one_step",
                n,
                c,
            )
    if "spawn_latency" in scenarios:
        if has_raw:
            add(
                "raw spawn->start",
                ("latency", "spawn_to_start", "raw"),
                raw_ceiling.spawn_latency,
                "raw_lat",
                sz.latency_samples,
            )
        if has_dt:
            add_trio(
                "durable_trio spawn->start",
                ("latency", "spawn_to_start", "durable_trio"),
                dt_bench.spawn_latency,
                "dt_lat",
                sz.latency_samples,
            )
            add_trio(
                "durable_trio spawn->start (poll only)",
                ("latency", "spawn_to_start", "durable_trio_poll_only"),
                dt_bench.spawn_latency,
                "dt_lat",
                sz.poll_samples,
                notify=False,
            )
    if "emit_latency" in scenarios and has_dt:
        add_trio(
            "durable_trio emit->resume",
            ("latency", "emit_to_resume", "durable_trio"),
            dt_bench.emit_latency,
            "dt_emit",
            sz.emit_samples,
        )
    if "checkpoint" in scenarios:
        steps = sz.checkpoint_steps
        if has_raw or has_dt:
            add(
                "raw INSERT round trip",
                ("latency", "checkpoint", "raw_insert"),
                raw_ceiling.insert_roundtrip,
                "raw_ins",
                steps,
            )
        if has_dt:
            add_trio(
                "raw INSERT round trip, trio connection",
                ("latency", "checkpoint", "raw_insert_trio"),
                dt_bench.insert_roundtrip_trio,
                "dt_ins",
                steps,
            )
            add_trio(
                "durable_trio ctx.step round trip",
                ("latency", "checkpoint", "durable_trio_step"),
                dt_bench.checkpoint_latency,
                "dt_ckpt",
                steps,
            )
    if "fanout" in scenarios and has_dt:
        add_trio(
            f"durable_trio fan-out {sz.fanout}",
            ("fanout", "durable_trio"),
            dt_bench.fanout,
            "dt_fan",
            sz.fanout,
        )
    if "spawn_rate" in scenarios:
        one, batch = sz.spawn_single, sz.spawn_batch
        if has_raw:
            add(
                "raw spawn rate",
                ("spawn_rate", "raw"),
                raw_ceiling.spawn_rate,
                "raw_sr",
                one,
                batch,
            )
        if has_dt:
            add_trio(
                "durable_trio spawn rate",
                ("spawn_rate", "durable_trio"),
                dt_bench.spawn_rate,
                "dt_sr",
                one,
                batch,
            )
        for peer in peer_runner.SPAWN_PEERS:
            if peer in systems:
                thunk = functools.partial(peer_runner.run_peer_spawn, peer, url, one, batch)
                units.append((f"{peer} enqueue rate", ("spawn_rate", peer), thunk))
    if "client_spawn" in scenarios and has_dt:
        add(
            "spawn one by one from each client",
            ("client_spawn",),
            clients_bench.client_spawn,
            "dt_cs",
            sz.spawn_single,
        )
    if "backlog" in scenarios:
        c, window = sz.backlog_c, sz.backlog_window
        for pending in sz.backlog:
            if has_raw:
                add(
                    f"raw claim, {pending:,} pending",
                    ("claim_backlog", "raw", str(pending)),
                    raw_ceiling.backlog,
                    "raw_bl",
                    pending,
                    c,
                    window,
                )
            if has_dt:
                add_trio(
                    f"durable_trio claim, {pending:,} pending",
                    ("claim_backlog", "durable_trio", str(pending)),
                    dt_bench.backlog,
                    "dt_bl",
                    pending,
                    c,
                    window,
                )
    if "ceiling" in scenarios and has_raw and has_dt:
        for c in sz.ceiling_concurrency:
            add(
                f"ceiling: every raw design, pgbench and durable_trio, c={c}",
                ("ceiling", str(c)),
                limits.ceiling,
                "lim_ceil",
                c,
                n_for(c),
                sz.ceiling_window,
                timeout=sz.run_timeout,
            )
    if "server_work" in scenarios and has_dt:
        add(
            "durable_trio row changes per task",
            ("server_work", "durable_trio"),
            limits.server_work,
            "lim_work",
            sz.server_work_concurrency,
            sz.n_c1,
            timeout=sz.run_timeout,
        )
    if "scale" in scenarios and has_dt:
        add(
            f"durable_trio {sz.scale_processes} processes x c={sz.scale_c}",
            ("scale", "durable_trio"),
            limits.processes,
            "lim_scale",
            sz.scale_processes,
            sz.scale_n,
            sz.scale_c,
        )
    if "retained" in scenarios and has_dt:
        add(
            f"durable_trio with {sz.retained} finished tasks retained",
            ("retained", "durable_trio"),
            limits.retained,
            "lim_ret",
            sz.retained,
            sz.n,
            sz.retained_c,
            sz.retained_load_budget,
            timeout=sz.run_timeout,
        )
    if "retention" in scenarios and has_dt:
        add_trio(
            f"durable_trio cleanup of {sz.retention_finished:,} finished tasks",
            ("retention", "durable_trio"),
            dt_bench.retention,
            "dt_ret",
            sz.retention_finished,
            sz.retention_pending,
            sz.backlog_c,
            window=sz.retention_window,
            batch=sz.retention_batch,
            slices=sz.retention_slices,
            duties=sz.retention_duties,
        )
    if "rss" in scenarios and has_dt:
        add(
            f"durable_trio RSS, {sz.rss_tasks} in flight",
            ("rss", "durable_trio"),
            dt_bench.rss,
            "dt_rss",
            sz.rss_tasks,
        )
    if "otel_overhead" in scenarios and has_dt:
        for c in (8, 64):
            add_trio(
                f"durable_trio 1-step c={c}, OpenTelemetry hooks off/on/10% sampled",
                ("otel_overhead", str(c)),
                dt_bench.otel_overhead,
                "dt_otel",
                sz.otel_n,
                c,
                sz.otel_rounds,
                timeout=sz.run_timeout,
            )
    return units


def _peer_of(path: tuple[str, ...]) -> str | None:
    """The peer library a unit of work runs, if any (its results path names it)."""
    return next((part for part in path[1:] if part in PEERS), None)


def _runs_peer(peer: str, scenarios: list[str]) -> bool:
    """Whether a scenario asked for needs the peer's virtualenv."""
    return "throughput" in scenarios or (
        "spawn_rate" in scenarios and peer in peer_runner.SPAWN_PEERS
    )


def _git_revision() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except OSError:
        return None
    return done.stdout.strip() or None


def _meta(args: argparse.Namespace, sz: Sizes, url_source: str) -> dict[str, Any]:
    import durable_trio

    return {
        "started_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "scale": args.scale,
        "systems": args.systems,
        "scenarios": args.scenarios,
        "sizes": asdict(sz),
        "database": url_source,
        "durable_trio_version": durable_trio.__version__,
        "git_revision": _git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }


def print_tables(results: dict[str, Any], path: Path) -> None:
    print()
    print(report.server_line(results))
    print()
    print(
        "Throughput (one worker process; completions counted in the database; "
        "* = run stopped at its time limit):"
    )
    print(report.throughput_table(results))
    print()
    print(report.other_table(results))
    print()
    for extra in report.limits_tables(results):
        print()
        print(extra)
    print()
    if results.get("otel_overhead"):
        print(report.otel_table(results))
        print()
    print(report.targets_table(results.get("targets") or report.evaluate_targets(results)))
    if results.get("errors"):
        print()
        print("Errors:", ", ".join(results["errors"]))
    print(f"\nresults: {path} ({results['meta'].get('duration_s')} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small numbers; no peers unless named")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=None)
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=None)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count by this")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="only print the tables of a results file"
    )
    args = parser.parse_args(argv)
    if args.report is not None:
        print_tables(json.loads(args.report.read_text()), args.report)
        return 0
    if args.systems is None:
        args.systems = ["raw", "durable_trio"] if args.quick else list(SYSTEMS)
    if args.scenarios is None:
        args.scenarios = list(SCENARIOS)
    sz = (QUICK if args.quick else FULL).scaled(args.scale)
    args.results_dir.mkdir(parents=True, exist_ok=True)

    server = None
    url = os.environ.get(URL_ENV)
    if url:
        url_source = f"${URL_ENV}"
    else:
        from durable_trio._ephemeral import EphemeralPostgres

        print(
            "starting a throwaway PostgreSQL (fsync and synchronous_commit on)...",
            file=sys.stderr,
            flush=True,
        )
        server = EphemeralPostgres(tcp=True, fast=False).start()
        url = server.url
        url_source = "durable_trio._ephemeral.EphemeralPostgres(tcp=True) (default durability)"
    t_start = time.perf_counter()
    results: dict[str, Any] = {"meta": _meta(args, sz, url_source)}
    for key in (
        "throughput",
        "two_process",
        "latency",
        "fanout",
        "spawn_rate",
        "client_spawn",
        "claim_backlog",
        "retention",
        "rss",
        "ceiling",
        "server_work",
        "scale",
        "retained",
        "otel_overhead",
        "peers",
        "errors",
    ):
        results[key] = {}
    try:
        results["meta"]["server"] = server_settings(url)
        peers = [p for p in PEERS if p in args.systems and _runs_peer(p, args.scenarios)]
        with temporary_database(url, BENCH_DB) as bench_url:
            units = plan(bench_url, args.systems, args.scenarios, sz)
            progress = Progress(len(peers) + len(units))
            try:
                ready_peers = set()
                for peer in peers:
                    progress.start(f"{peer}: virtualenv")
                    try:
                        peer_runner.ensure_venv(peer, log=None)
                        results["peers"][peer] = {
                            "status": "ok",
                            "versions": peer_runner.installed_versions(peer),
                        }
                        ready_peers.add(peer)
                    except Exception as ex:  # noqa: BLE001 - recorded, the run goes on
                        results["peers"][peer] = {"status": "install failed", "error": str(ex)}
                        progress.write(f"{peer}: install failed: {str(ex)[:300]}")
                    progress.advance()
                for label, path, thunk in units:
                    progress.start(label)
                    peer = _peer_of(path)
                    if peer is not None and peer not in ready_peers:
                        progress.advance()
                        continue
                    try:
                        _put(results, path, thunk())
                    except Exception as ex:  # noqa: BLE001 - recorded, the run goes on
                        detail = "".join(traceback.format_exception(ex))[-4000:]
                        results["errors"][label] = detail
                        _put(results, path, {"error": str(ex)[:2000]})
                        if peer is not None:
                            results["peers"][peer]["status"] = "failed"
                            errors = results["peers"][peer].setdefault("errors", {})
                            errors[path[-1]] = str(ex)[:2000]
                        progress.write(f"{label}: FAILED: {str(ex)[:300]}")
                    progress.advance()
            finally:
                progress.close()
    finally:
        if server is not None:
            server.stop()
    results["meta"]["duration_s"] = round(time.perf_counter() - t_start, 1)
    results["meta"]["load_average_at_end"] = os.getloadavg()
    results["targets"] = report.evaluate_targets(results)

    suffix = "-quick" if args.quick else ""
    if not args.no_plots:
        try:
            results["plots"] = report.plots(results, args.results_dir, suffix)
        except ImportError as ex:
            results["plots"] = {"skipped": f"matplotlib not installed ({ex})"}
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(results, indent=1, default=str)
    (args.results_dir / f"{stamp}{suffix}.json").write_text(text)
    (args.results_dir / f"latest{suffix}.json").write_text(text)

    print_tables(results, args.results_dir / f"latest{suffix}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
