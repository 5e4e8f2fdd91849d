"""Turning a results dict into the stdout tables, the performance target list and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PREFETCH = 4  # the throughput scenario's prefetch variant (benchmarks/run.py)
ONE_STEP = ["raw", "durable_trio", "durable_trio_prefetch", "absurd", "dbos"]
JOB_LIKE = ["raw_zero_step", "durable_trio_zero_step", "procrastinate", "pgqueuer"]
LABELS = {
    "raw": "raw SQL, simple worker (1 step)",
    "durable_trio": "durable_trio (1 step)",
    "durable_trio_prefetch": f"durable_trio (1 step, prefetch={PREFETCH})",
    "raw_zero_step": "raw SQL (0 steps)",
    "durable_trio_zero_step": "durable_trio (0 steps)",
    "procrastinate": "procrastinate (job)",
    "pgqueuer": "pgqueuer (job)",
    "dbos": "DBOS (1-step workflow)",
    "absurd": "absurd (1 step)",
}


def _rate(results: dict[str, Any], system: str, conc: int | str) -> float | None:
    cell = results.get("throughput", {}).get(system, {}).get(str(conc))
    if not isinstance(cell, dict) or "tasks_per_s" not in cell:
        return None
    return float(cell["tasks_per_s"])


def _ms(results: dict[str, Any], *path: str, key: str = "p50_ms") -> float | None:
    node: Any = results
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    value = node.get(key) if isinstance(node, dict) else None
    return None if value is None else float(value)


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    # A run of only some scenarios can leave rows and header of different lengths: pad.
    size = max(len(r) for r in [header, *rows])
    header = [*header, *[""] * (size - len(header))]
    rows = [[*row, *[""] * (size - len(row))] for row in rows]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    out = [line, "  ".join("-" * w for w in widths)]
    for row in rows:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(out)


def concurrencies(results: dict[str, Any]) -> list[int]:
    seen: set[int] = set()
    for by_conc in results.get("throughput", {}).values():
        seen.update(int(c) for c in by_conc)
    return sorted(seen)


def throughput_table(results: dict[str, Any]) -> str:
    concs = concurrencies(results)
    header = ["tasks/s (x raw ceiling of the same kind)", *[f"c={c}" for c in concs]]
    rows = []
    for system in [*ONE_STEP, *JOB_LIKE]:
        if system not in results.get("throughput", {}):
            continue
        row = [LABELS.get(system, system)]
        for c in concs:
            rate = _rate(results, system, c)
            baseline = "raw_zero_step" if system in JOB_LIKE else "raw"
            raw = _rate(results, baseline, c)
            cell = results["throughput"][system].get(str(c), {})
            if rate is None:
                row.append("error" if isinstance(cell, dict) and cell.get("error") else "-")
            elif raw and system != baseline:
                row.append(f"{rate:,.0f} ({rate / raw:.2f}x)")
            else:
                row.append(f"{rate:,.0f}")
            if isinstance(cell, dict) and cell.get("timed_out"):
                row[-1] += "*"
        rows.append(row)
    for system, cell in results.get("two_process", {}).items():
        if isinstance(cell, dict) and "tasks_per_s" in cell:
            raw2 = results["two_process"].get("raw", {}).get("tasks_per_s")
            text = f"{cell['tasks_per_s']:,.0f}"
            if raw2 and system != "raw":
                text += f" ({cell['tasks_per_s'] / raw2:.2f}x)"
            rows.append(
                [f"{LABELS.get(system, system)}, 2 processes x c={cell.get('concurrency_each')}"]
                + [""] * (len(concs) - 1)
                + [text]
            )
    return _table(header, rows)


def other_table(results: dict[str, Any]) -> str:
    rows: list[list[str]] = []
    lat = results.get("latency", {})
    for key, label in [
        ("durable_trio", "spawn->start, idle worker, NOTIFY"),
        ("durable_trio_poll_only", "spawn->start, idle worker, poll only (1 s)"),
        ("raw", "spawn->start, raw ceiling"),
    ]:
        node = lat.get("spawn_to_start", {}).get(key)
        if isinstance(node, dict) and "p50_ms" in node:
            rows.append([label, f"p50 {node['p50_ms']:.2f} ms", f"p99 {node['p99_ms']:.2f} ms"])
    for key, label in [
        ("durable_trio", "emit->resume (durable_trio)"),
    ]:
        node = lat.get("emit_to_resume", {}).get(key)
        if isinstance(node, dict) and "p50_ms" in node:
            rows.append([label, f"p50 {node['p50_ms']:.2f} ms", f"p99 {node['p99_ms']:.2f} ms"])
    for key, label in [
        ("durable_trio_step", "checkpoint: ctx.step round trip"),
        ("raw_insert", "checkpoint: one raw INSERT (autocommit)"),
        ("raw_insert_trio", "checkpoint: the same INSERT via trio+psycopg async"),
    ]:
        node = lat.get("checkpoint", {}).get(key)
        if isinstance(node, dict) and "p50_ms" in node:
            rows.append([label, f"p50 {node['p50_ms']:.3f} ms", f"p99 {node['p99_ms']:.3f} ms"])
    fan = results.get("fanout", {}).get("durable_trio")
    if isinstance(fan, dict) and "seconds" in fan:
        rows.append(
            [
                f"fan-out: parent spawns+joins {fan['children']} children",
                f"{fan['seconds']:.2f} s",
                f"{fan['children_per_s']:,.0f} children/s",
            ]
        )
    rates = results.get("spawn_rate", {})
    raw_rate = rates.get("raw", {})
    for system, node in rates.items():
        if isinstance(node, dict) and "batch_per_s" in node:
            one, batch = node["one_by_one_per_s"], node["batch_per_s"]
            rows.append(
                [
                    f"spawn rate ({system})",
                    f"one by one {one:,.0f}/s{_x_raw(one, raw_rate.get('one_by_one_per_s'))}",
                    f"batch of {node['batch_size']:,} {batch:,.0f}/s"
                    + _x_raw(batch, raw_rate.get("batch_per_s")),
                ]
            )
    for kind, node in results.get("client_spawn", {}).items():
        if isinstance(node, dict) and "ratio" in node:
            rows.append(
                [
                    f"spawn one by one, {kind} client",
                    f"{node['client_per_s']:,.0f}/s vs raw {node['raw_per_s']:,.0f}/s",
                    f"{node['ratio']:.2f} x the raw INSERT on its driver"
                    + (
                        f"; {node['ratio_to_statement']:.2f} x its own statement bare"
                        f" ({node['statement_per_s']:,.0f}/s)"
                        if "ratio_to_statement" in node
                        else ""
                    ),
                ]
            )
    for system, by_pending in results.get("claim_backlog", {}).items():
        if not isinstance(by_pending, dict):
            continue
        for pending, node in sorted(by_pending.items(), key=lambda kv: int(kv[0])):
            if isinstance(node, dict) and "tasks_per_s" in node:
                rows.append(
                    [
                        f"claim+complete with {int(pending):,} pending ({system})",
                        f"{node['tasks_per_s']:,.0f} tasks/s",
                        f"first {node['timed']:,} of {node['completed_in_db']:,} done"
                        if "timed" in node
                        else f"{node['completed_in_db']:,} done",
                    ]
                )
    node = results.get("retention", {}).get("durable_trio")
    if isinstance(node, dict) and "by_duty" in node:
        for duty, cell in sorted(node["by_duty"].items(), reverse=True):
            removed = cell["removed"]
            rows.append(
                [
                    f"drain while cleanup(duty={duty}) removes finished tasks",
                    f"{cell['tasks_per_s_cleaning']:,.0f} vs {cell['tasks_per_s_idle']:,.0f} "
                    f"tasks/s ({_fmt(cell['ratio'], 2)}x)",
                    f"{removed['tasks']:,} tasks + {removed['runs']:,} runs + "
                    f"{removed['checkpoints']:,} checkpoints in {cell['cleanup_s']:.1f} s "
                    f"({cell['rows_per_s']:,.0f} rows/s), {len(cell['pairs'])} pairs, "
                    f"of {node['finished']:,}",
                ]
            )
    node = results.get("rss", {}).get("durable_trio")
    if isinstance(node, dict) and "rss_mb_loaded" in node:
        rows.append(
            [
                f"worker RSS, {node['in_flight']} in-flight tasks sleeping in a step",
                f"{node['rss_mb_loaded']:.1f} MB",
                f"idle {node['rss_mb_worker_started']:.1f} MB",
            ]
        )
    return _table(["measurement", "value", "detail"], rows) if rows else "(none)"


OTEL_TARGET = 0.85  # one-step throughput with the OpenTelemetry hooks over without


def otel_table(results: dict[str, Any]) -> str:
    """One-step throughput with the OpenTelemetry hooks against without, per concurrency,
    and whether the ratio meets its target (a separate table: the target list is fixed);
    the last columns are the same hooks under a 10% trace sampler, for scale."""
    rows = []
    for conc, cell in sorted(results.get("otel_overhead", {}).items(), key=lambda kv: int(kv[0])):
        if not isinstance(cell, dict) or "ratio" not in cell:
            rows.append([f"c={conc}", "error", "", "", "", "", ""])
            continue
        rounds = zip(
            cell["off_tasks_per_s"],
            cell["on_tasks_per_s"],
            cell["sampled_tasks_per_s"],
            strict=True,
        )
        pairs = " ".join(f"{off:,.0f}/{on:,.0f}/{some:,.0f}" for off, on, some in rounds)
        rows.append(
            [
                f"c={conc} ({cell['n']} tasks x {cell['rounds']} rounds)",
                f"{cell['off_median']:,.0f}",
                f"{cell['on_median']:,.0f}",
                f"{cell['ratio']:.2f}x",
                "yes" if cell["ratio"] >= OTEL_TARGET else "NO",
                f"{cell['sampled_ratio']:.2f}x",
                pairs,
            ]
        )
    header = [
        "OpenTelemetry hooks, 1 step",
        "off tasks/s",
        "on tasks/s",
        "on/off",
        f">= {OTEL_TARGET}x",
        "10% sampled/off",
        "rounds off/on/sampled",
    ]
    return _table(header, rows)


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """docs/performance.md's targets with the measured values (None where not measured)."""
    out: list[dict[str, Any]] = []

    def add(target: str, measured: str, met: bool | None) -> None:
        out.append({"target": target, "measured": measured, "met": met})

    concs = concurrencies(results)
    ratios = {c: (_rate(results, "durable_trio", c), _rate(results, "raw", c)) for c in concs}
    parts, ok = [], []
    for c, (d, r) in ratios.items():
        if d and r:
            parts.append(f"c={c}: {d / r:.2f}")
            ok.append(d / r >= 0.6)
    add(
        "one-step throughput >= 0.6 x raw ceiling (same concurrency)",
        ", ".join(parts) or "not measured",
        all(ok) if ok else None,
    )
    for peer in ("absurd", "procrastinate"):
        parts, ok = [], []
        for c in concs:
            d, p = _rate(results, "durable_trio", c), _rate(results, peer, c)
            if d and p:
                parts.append(f"c={c}: {d / p:.2f}x")
                ok.append(d / p >= 3)
        add(
            f"one-step throughput >= 3 x {peer} (same concurrency)",
            ", ".join(parts) or "not measured",
            all(ok) if ok else None,
        )
    parts, ok = [], []
    for c in concs:
        d, p = _rate(results, "durable_trio_zero_step", c), _rate(results, "pgqueuer", c)
        if d and p:
            parts.append(f"c={c}: {d:,.0f} vs {p:,.0f} ({d / p:.2f}x)")
            ok.append(d >= p)
    add(
        "zero-step throughput >= pgqueuer (same concurrency)",
        "; ".join(parts) or "not measured",
        all(ok) if ok else None,
    )
    p50 = _ms(results, "latency", "spawn_to_start", "durable_trio")
    p99 = _ms(results, "latency", "spawn_to_start", "durable_trio", key="p99_ms")
    add("spawn->start p50 <= 5 ms", _fmt(p50, 2) + " ms", None if p50 is None else p50 <= 5)
    add("spawn->start p99 <= 25 ms", _fmt(p99, 2) + " ms", None if p99 is None else p99 <= 25)
    step = _ms(results, "latency", "checkpoint", "durable_trio_step")
    insert = _ms(results, "latency", "checkpoint", "raw_insert")
    via_trio = _ms(results, "latency", "checkpoint", "raw_insert_trio")
    if step is not None and insert:
        add(
            "checkpoint p50 <= 1.5 x one raw INSERT round trip",
            f"{step:.3f} ms vs {insert:.3f} ms ({step / insert:.2f}x)"
            + (f"; the INSERT via trio: {via_trio:.3f} ms" if via_trio is not None else ""),
            step <= 1.5 * insert,
        )
    else:
        add("checkpoint p50 <= 1.5 x one raw INSERT round trip", "not measured", None)
    backlog = results.get("claim_backlog", {}).get("durable_trio", {})
    sizes = sorted(int(k) for k, v in backlog.items() if isinstance(v, dict) and "tasks_per_s" in v)
    if len(sizes) >= 2:
        small, big = backlog[str(sizes[0])]["tasks_per_s"], backlog[str(sizes[-1])]["tasks_per_s"]
        add(
            f"throughput at {sizes[-1]:,} pending >= 0.8 x at {sizes[0]:,} pending",
            f"{big:,.0f} vs {small:,.0f} tasks/s ({big / small:.2f}x)",
            big >= 0.8 * small,
        )
    else:
        add("throughput at 1M pending >= 0.8 x at 10k pending", "not measured", None)
    ret = results.get("retention", {}).get("durable_trio", {})
    cells = ret.get("by_duty", {}) if isinstance(ret, dict) else {}
    gentle = min(cells, key=float, default=None)
    if gentle is not None and cells[gentle].get("ratio") is not None:
        cell = cells[gentle]
        add(
            f"drain while cleanup(duty={gentle}) runs >= 0.9 x without",
            f"{cell['tasks_per_s_cleaning']:,.0f} vs {cell['tasks_per_s_idle']:,.0f} tasks/s "
            f"({cell['ratio']:.2f}x; median pair {_fmt(cell['ratio_median_pair'], 2)}x)",
            cell["ratio"] >= 0.9,
        )
    else:
        add("drain while a cleanup runs >= 0.9 x without", "not measured", None)
    rss = results.get("rss", {}).get("durable_trio", {})
    if "rss_mb_loaded" in rss:
        add(
            f"{rss['in_flight']} in-flight tasks in one worker <= 150 MB RSS",
            f"{rss['rss_mb_loaded']:.1f} MB",
            rss["rss_mb_loaded"] <= 150,
        )
    else:
        add("1,000 in-flight tasks in one worker <= 150 MB RSS", "not measured", None)
    for target, measured, met in _spawn_targets(results):
        add(target, measured, met)
    rate = results.get("spawn_rate", {}).get("durable_trio", {}).get("batch_per_s")
    add(
        "batch spawn >= 20,000 tasks/s",
        f"{rate:,.0f} tasks/s" if rate else "not measured",
        None if rate is None else rate >= 20_000,
    )
    return out


def _x_raw(value: float, raw: float | None) -> str:
    return f" ({value / raw:.2f}x raw)" if raw else ""


def _spawn_targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """Spawn rates against raw INSERT + NOTIFY and pgqueuer's enqueue, same run."""
    rates = results.get("spawn_rate", {})
    dt, raw, pgq = (rates.get(k, {}) for k in ("durable_trio", "raw", "pgqueuer"))
    out: list[tuple[str, str, bool | None]] = []
    for key, what, share in (
        ("one_by_one_per_s", "one spawn", 0.85),
        ("batch_per_s", "batch spawn", 0.8),
    ):
        mine = dt.get(key)
        for label, other, factor in (("raw", raw.get(key), share), ("pgqueuer", pgq.get(key), 1.0)):
            target = f"{what} >= {factor:g} x {label} (same run)"
            if mine is None or other is None:
                out.append((target, "not measured", None))
            else:
                ratio = mine / other
                out.append(
                    (target, f"{mine:,.0f} vs {other:,.0f}/s ({ratio:.2f}x)", ratio >= factor)
                )
    return out


def targets_table(targets: list[dict[str, Any]]) -> str:
    rows = [
        [t["target"], t["measured"], {True: "yes", False: "NO", None: "-"}[t["met"]]]
        for t in targets
    ]
    return _table(["performance target", "measured", "met"], rows)


def plots(results: dict[str, Any], outdir: Path, suffix: str = "") -> list[str]:
    """throughput-vs-concurrency and latency-distribution PNGs; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    concs = concurrencies(results)
    if concs:
        fig, ax = plt.subplots(figsize=(8, 5))
        for system in [*ONE_STEP, *JOB_LIKE]:
            xs = [c for c in concs if _rate(results, system, c)]
            if not xs:
                continue
            ys = [_rate(results, system, c) for c in xs]
            style = "-" if system in ONE_STEP else "--"
            ax.plot(xs, ys, style, marker="o", label=LABELS.get(system, system))
        ax.set_xscale("log", base=2)
        ax.set_xticks(concs, [str(c) for c in concs])
        ax.set_xlabel("worker concurrency (one worker process)")
        ax.set_ylabel("completed tasks/s (counted in the database)")
        ax.set_title("End-to-end throughput vs concurrency (same Postgres, synchronous_commit on)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        name = f"throughput{suffix}.png"
        fig.tight_layout()
        fig.savefig(outdir / name, dpi=110)
        plt.close(fig)
        files.append(name)

    series = []
    lat = results.get("latency", {})
    for path, label in [
        (("spawn_to_start", "durable_trio"), "spawn->start durable_trio (NOTIFY)"),
        (("spawn_to_start", "raw"), "spawn->start raw ceiling"),
        (("emit_to_resume", "durable_trio"), "emit->resume durable_trio"),
        (("checkpoint", "durable_trio_step"), "checkpoint: ctx.step"),
        (("checkpoint", "raw_insert"), "checkpoint: raw INSERT"),
        (("checkpoint", "raw_insert_trio"), "checkpoint: raw INSERT, trio connection"),
    ]:
        node = lat.get(path[0], {}).get(path[1])
        if isinstance(node, dict) and node.get("samples_ms"):
            series.append((label, sorted(node["samples_ms"])))
    if series:
        fig, ax = plt.subplots(figsize=(8, 5))
        for label, values in series:
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.step([max(v, 1e-3) for v in values], ys, where="post", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of samples <= x")
        ax.set_title("Latency distributions (CDF)")
        ax.axhline(0.5, color="grey", lw=0.5)
        ax.axhline(0.99, color="grey", lw=0.5)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=8)
        name = f"latency{suffix}.png"
        fig.tight_layout()
        fig.savefig(outdir / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


# -- the limit scenarios (ceiling, server_work, scale, retained) -------------------------


def server_line(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    srv = meta.get("server", {})
    return (
        f"server: PostgreSQL {srv.get('server_version', '?')}, "
        f"shared_buffers {srv.get('shared_buffers', '?')}, fsync {srv.get('fsync', '?')}, "
        f"synchronous_commit {srv.get('synchronous_commit', '?')}; "
        f"{meta.get('cpus', '?')} CPUs shared by the server, the workers and the harness; "
        f"load average at start {_load(meta.get('load_average_at_start'))}"
    )


def _load(value: Any) -> str:
    if isinstance(value, list | tuple) and value:
        return ", ".join(f"{float(v):.2f}" for v in value)
    return "?"


def _cost_cells(cell: dict[str, Any]) -> list[str]:
    cost = cell.get("cost") or {}
    return [
        _fmt(cost.get("commits_per_s")),
        _fmt(cost.get("commits_per_task"), 3),
        _fmt(cost.get("wal_bytes_per_task")),
        _fmt(cost.get("server_cpu_us_per_task")),
        _fmt(cost.get("client_cpu_us_per_task")),
    ]


COST_HEADER = ["commits/s", "commits/task", "WAL B/task", "server CPU us/task", "client us/task"]


def ceiling_table(results: dict[str, Any]) -> str | None:
    by_conc = results.get("ceiling") or {}
    if not by_conc:
        return None
    rows = []
    summary = []
    for conc in sorted(by_conc, key=int):
        node = by_conc[conc]
        if not isinstance(node, dict) or "runs" not in node:
            rows.append([f"c={conc}", "error", *[""] * len(COST_HEADER)])
            continue
        for name, cell in node["runs"].items():
            label = f"c={conc} {name}" + (" (best raw)" if name == node.get("best") else "")
            if "tasks_per_s" not in cell:
                rows.append([label, "error", *[""] * len(COST_HEADER)])
                continue
            rows.append([label, _fmt(cell["tasks_per_s"]), *_cost_cells(cell)])
        if "durable_trio_fraction" in node:
            summary.append(
                f"c={conc}: {node['durable_trio_fraction']:.2f} of {node['best']} "
                f"({node['best_tasks_per_s']:,.0f}/s)"
            )
    text = (
        "Ceiling (LxB: L lanes of B tasks each, one commit per batch; pgbench: the same "
        "statement with the step in SQL; naive: the throughput table's raw SQL):\n"
        + _table(["design", "tasks/s", *COST_HEADER], rows)
    )
    if summary:
        text += "\ndurable_trio one-step as a fraction of the best raw design: " + "; ".join(
            summary
        )
    return text


def server_work_table(results: dict[str, Any]) -> str | None:
    node = (results.get("server_work") or {}).get("durable_trio")
    if not isinstance(node, dict):
        return None
    if "error" in node:
        return f"Row changes per task: error: {node['error'][:200]}"
    rows = []
    for conc in sorted((k for k in node if k.isdigit()), key=int):
        cell = node[conc]
        if "tables" not in cell:
            rows.append([f"c={conc}", "error", "", "", "", ""])
            continue
        for table, work in cell["tables"].items():
            ratio = work.get("hot_ratio")
            rows.append(
                [
                    f"c={conc} {table}",
                    _fmt(work["ins_per_task"], 3),
                    _fmt(work["upd_per_task"], 3),
                    _fmt(work["hot_upd_per_task"], 3),
                    _fmt(work["del_per_task"], 3),
                    "-" if ratio is None else f"{ratio:.0%}",
                ]
            )
    growth = []
    for conc in sorted((k for k in node if k.isdigit()), key=int):
        sizes = node[conc].get("index_bytes_per_task") or {}
        if sizes:
            growth.append(
                f"c={conc}: " + ", ".join(f"{name} {b:,.0f}" for name, b in sizes.items())
            )
    text = "Row changes per task, durable_trio one-step drain (pg_stat_user_tables):\n"
    text += _table(["table", "inserts", "updates", "HOT updates", "deletes", "HOT share"], rows)
    if growth:
        text += "\nindex growth, bytes per task: " + "; ".join(growth)
    return text


def scale_table(results: dict[str, Any]) -> str | None:
    node = (results.get("scale") or {}).get("durable_trio")
    if not isinstance(node, dict):
        return None
    if "error" in node:
        return f"Worker processes: error: {node['error'][:200]}"
    rows = []
    for k in sorted((k for k in node if k.isdigit()), key=int):
        cell = node[k]
        if "tasks_per_s" not in cell:
            rows.append([f"{k} x c={node.get('concurrency_each')}", "error", "", *[""] * 5])
            continue
        rows.append(
            [
                f"{k} x c={node.get('concurrency_each')}",
                _fmt(cell["tasks_per_s"]),
                _fmt(cell["tasks_per_s_per_core"]),
                *_cost_cells(cell),
            ]
        )
    return (
        f"Worker processes on one queue ({node.get('cpus')} CPUs for everything; "
        "client CPU: the worker processes):\n"
        + _table(["processes", "tasks/s", "tasks/s per core", *COST_HEADER], rows)
    )


def retained_table(results: dict[str, Any]) -> str | None:
    node = (results.get("retained") or {}).get("durable_trio")
    if not isinstance(node, dict):
        return None
    if "error" in node:
        return f"Finished tasks retained: error: {node['error'][:200]}"
    rows = []
    for size in sorted(node, key=int):
        cell = node[size]
        if "tasks_per_s" not in cell:
            rows.append([f"{int(size):,} asked", "error", "", *[""] * 5])
            continue
        load = cell.get("load", {})
        kept = load.get("retained", 0)
        note = f"{kept:,}" + (f" (asked {int(size):,})" if kept < int(size) else "")
        if kept:
            mib = load["bytes_on_disk"] / 2**20
            note += f", {mib:,.0f} MiB, loaded in {load['load_seconds']:.0f} s"
        rows.append([note, _fmt(cell["tasks_per_s"]), *_cost_cells(cell)])
    return "One-step drain with finished tasks retained (one worker, c=32):\n" + _table(
        ["finished tasks retained", "tasks/s", *COST_HEADER], rows
    )


def limits_tables(results: dict[str, Any]) -> list[str]:
    tables = [
        ceiling_table(results),
        server_work_table(results),
        scale_table(results),
        retained_table(results),
    ]
    return [t for t in tables if t]
