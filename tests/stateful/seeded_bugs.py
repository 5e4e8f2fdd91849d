"""Does the state machine catch known bugs? Seed each into a scratch copy and see.

    .venv/bin/python tests/stateful/seeded_bugs.py            # every bug, seed 0
    .venv/bin/python tests/stateful/seeded_bugs.py heartbeat-owner no-cascade
    .venv/bin/python tests/stateful/seeded_bugs.py --seed 3 --examples 200

For each bug the working tree's tracked files are copied to a temporary directory, one
small edit is made there (never in the working tree), and tests/stateful runs in the
copy with a fixed Hypothesis seed (the copy's own src/ and sql/ are the ones imported;
its example database starts empty). A failing run means the bug was caught. The script
prints a table: bug, caught or missed, examples run, seconds, and the first assertion
that failed (unshrunk unless ``--shrink``). ``--control`` runs the unmodified copy too,
which must pass.

Not collected by pytest (no test_ prefix): it starts its own pytest runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[2]

_ADVISORY = "    PERFORM pg_advisory_xact_lock(@schema.event_lock_key(p_queue, p_event));\n"


@attrs.frozen
class Bug:
    name: str
    what: str
    # (file, text, replacement): each text must occur exactly once in its file.
    edits: tuple[tuple[str, str, str], ...]


BUGS = (
    Bug(
        "lost-wakeup-emit",
        "emit_event does not take the (queue, event) advisory lock",
        (
            (
                "sql/functions/deliver_event.sql",
                _ADVISORY + "    INSERT INTO @schema.events",
                "    INSERT INTO @schema.events",
            ),
        ),
    ),
    Bug(
        "lost-wakeup-await",
        "await_event does not take the (queue, event) advisory lock",
        (
            (
                "sql/functions/await_event.sql",
                _ADVISORY + "    SELECT value INTO v_value",
                "    SELECT value INTO v_value",
            ),
        ),
    ),
    Bug(
        "heartbeat-owner",
        "heartbeat renews a run whatever worker owns it",
        (
            (
                "sql/functions/heartbeat.sql",
                "holds_lease(f.worker_id, f.state, f.lease_expires_at, p_worker, v_now)",
                "holds_lease(f.worker_id, f.state, f.lease_expires_at, f.worker_id, v_now)",
            ),
        ),
    ),
    Bug(
        "no-cascade",
        "cancel_task cancels the task only, not its descendants",
        (
            (
                "sql/functions/cancel_task.sql",
                "JOIN tree ON c.parent_task_id = tree.task_id",
                "JOIN tree ON false",
            ),
        ),
    ),
    Bug(
        "retry-one-too-many",
        "decide_failure retries the last attempt (the SQL guard then fails the task)",
        (
            (
                "src/durable_trio/_core/retry.py",
                "if not retryable or attempt >= max_attempts:",
                "if not retryable or attempt > max_attempts:",
            ),
        ),
    ),
    Bug(
        "retry-one-too-few",
        "decide_failure gives up one attempt early",
        (
            (
                "src/durable_trio/_core/retry.py",
                "if not retryable or attempt >= max_attempts:",
                "if not retryable or attempt + 1 >= max_attempts:",
            ),
        ),
    ),
    Bug(
        "idempotency",
        "spawn ignores the idempotency key (a repeated key creates a second task)",
        (
            (
                "src/durable_trio/_clientcore.py",
                '"idempotency_key": opts.idempotency_key,',
                '"idempotency_key": None,',
            ),
        ),
    ),
    Bug(
        "fencing",
        "lock_owned_run ignores lease expiry (a zombie's transaction commits)",
        (
            (
                "sql/functions/lock_owned_run.sql",
                "coalesce(p_now, @schema.clock_now())",
                "'-infinity'::timestamptz",
            ),
        ),
    ),
    Bug(
        "replay",
        "ctx.step runs its function again on replay instead of returning the checkpoint",
        (
            (
                "src/durable_trio/_context.py",
                "        if checkpoint in self._checkpoints:\n"
                "            return typing.cast(T, self._stored(checkpoint, _read_as(rtype)))",
                "        if False:  # seeded\n"
                "            return typing.cast(T, self._stored(checkpoint, _read_as(rtype)))",
            ),
        ),
    ),
    Bug(
        "eager-reaper",
        "the reaper fails runs whose lease has an hour left (its query and fail_run)",
        (
            (
                "sql/queries.sql",
                "  AND r.lease_expires_at <= @schema.clock_now()\n",
                "  AND r.lease_expires_at <= @schema.clock_now() + interval '1 hour'\n",
            ),
            (
                "sql/functions/fail_run.sql",
                "AND r.state = 'running' AND r.lease_expires_at <= v_now",
                "AND r.state = 'running' AND r.lease_expires_at <= v_now + interval '1 hour'",
            ),
        ),
    ),
)


def scratch_copy(dest: Path) -> None:
    """The working tree's tracked files (as they are now, committed or not)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def seed_bug(tree: Path, bug: Bug) -> None:
    for file, text, replacement in bug.edits:
        path = tree / file
        source = path.read_text()
        count = source.count(text)
        if count != 1:
            raise SystemExit(f"{bug.name}: expected one {text!r} in {file}, found {count}")
        path.write_text(source.replace(text, replacement))


@attrs.frozen
class Outcome:
    caught: bool
    examples: str  # examples until the first failure (or run in all, when none failed)
    seconds: float
    first_failure: str


def run_machine(tree: Path, seed: int, examples: int | None, shrink: bool) -> Outcome:
    report = tree / "stateful-report.txt"
    env = {
        **os.environ,
        "PYTHONPATH": str(tree / "src"),
        "DURABLE_STATEFUL_REPORT": str(report),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("DURABLE_THOROUGH", None)
    if not shrink:
        env["DURABLE_STATEFUL_SHRINK"] = "0"
    if examples is not None:
        env["DURABLE_STATEFUL_EXAMPLES"] = str(examples)
    imported = subprocess.run(
        [sys.executable, "-c", "import durable_trio._store as s; print(s.sql_dir())"],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if Path(imported) != tree / "sql":
        raise SystemExit(f"the copy imports the library from the wrong place: {imported}")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/stateful",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--hypothesis-seed={seed}",
    ]
    started = time.monotonic()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    stats = {}
    if report.exists():
        for line in report.read_text().splitlines():
            n, _, what = line.partition("\t")
            stats[what] = n
    counted = stats.get("first failure in example", stats.get("examples (machines run)", "?"))
    failure = ""
    match = re.search(r"^E\s+(\w*(?:Error|Exception|Flaky\w*).*)$", done.stdout, re.MULTILINE)
    if match is None:  # not an exception named so: pytest's summary line says what
        match = re.search(r"^FAILED \S+ - (.*)$", done.stdout, re.MULTILINE)
    if match is not None:
        failure = match[1][:150]
    return Outcome(done.returncode != 0, counted, seconds, failure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bugs", nargs="*", help="names of the bugs to seed (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--examples", type=int, help="examples per run (default: the profile's)")
    parser.add_argument("--control", action="store_true", help="also run without a bug")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    parser.add_argument(
        "--shrink", action="store_true", help="shrink each failure (slower: minutes each)"
    )
    args = parser.parse_args()
    known = {bug.name: bug for bug in BUGS}
    unknown = set(args.bugs) - set(known)
    if unknown:
        raise SystemExit(f"unknown bugs {sorted(unknown)}; known: {sorted(known)}")
    chosen: list[Bug | None] = [known[name] for name in args.bugs] or list(BUGS)
    if args.control:
        chosen.insert(0, None)
    rows = []
    for bug in chosen:
        tree = Path(tempfile.mkdtemp(prefix="durable-seeded-"))
        try:
            scratch_copy(tree)
            if bug is not None:
                seed_bug(tree, bug)
            outcome = run_machine(tree, args.seed, args.examples, args.shrink)
        finally:
            if not args.keep:
                shutil.rmtree(tree, ignore_errors=True)
        name = bug.name if bug is not None else "(none: control)"
        if bug is None:
            verdict = "passes" if not outcome.caught else "FAILS"
        else:
            verdict = "caught" if outcome.caught else "MISSED"
        rows.append((name, verdict, outcome))
        print(
            f"{name}: {verdict} after {outcome.examples} example(s), {outcome.seconds:.0f} s"
            f" {outcome.first_failure}",
            flush=True,
        )
    print()
    print("| bug | result | examples | seconds | first failure |")
    print("|---|---|---|---|---|")
    for name, verdict, outcome in rows:
        failure = outcome.first_failure.replace("|", "\\|")
        print(f"| {name} | {verdict} | {outcome.examples} | {outcome.seconds:.0f} | {failure} |")
    if any(v in ("MISSED", "FAILS") for _, v, _ in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
