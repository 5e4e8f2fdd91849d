"""Peer libraries, each in its own virtualenv under benchmarks/.venvs/<name>, created here
with pip. Each runs benchmarks/peers/<name>_bench.py in a subprocess against a fresh
database on the same server (see peers/_peer_common.py for the protocol)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from _util import temporary_database

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"

# What each peer's venv gets: the library as its docs install it, plus psycopg for counting.
PEERS: dict[str, list[str]] = {
    "procrastinate": ["procrastinate", "psycopg[binary]"],
    "pgqueuer": ["pgqueuer", "asyncpg", "psycopg[binary]"],
    "dbos": ["dbos", "psycopg[binary]"],
    "absurd": ["absurd-sdk", "absurdctl", "psycopg[binary]"],
}


def _base_python() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_venv(name: str, *, log: Any = None) -> Path:
    """Create benchmarks/.venvs/<name> and pip-install the peer (once; a marker file records
    what was installed). Raises RuntimeError with pip's output on failure."""
    venv = VENVS / name
    marker = venv / "bench-installed.json"
    wanted = PEERS[name]
    python = venv / "bin" / "python"
    if marker.exists() and python.exists():
        try:
            if json.loads(marker.read_text()).get("packages") == wanted:
                return venv
        except ValueError:
            pass
    VENVS.mkdir(parents=True, exist_ok=True)
    steps = [
        [_base_python(), "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "-q", *wanted],
    ]
    for argv in steps:
        if log:
            log(f"{name}: {' '.join(argv[-3:])}")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-2000:]}"
                f"\n{done.stderr[-4000:]}"
            )
    marker.write_text(json.dumps({"packages": wanted}))
    return venv


def installed_versions(name: str) -> dict[str, str]:
    python = VENVS / name / "bin" / "python"
    code = (
        "import json, importlib.metadata as m, sys\n"
        "out = {}\n"
        "for d in sys.argv[1:]:\n"
        "    try: out[d] = m.version(d.split('[')[0])\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    done = subprocess.run(
        [str(python), "-c", code, *PEERS[name]], capture_output=True, text=True, timeout=60
    )
    return json.loads(done.stdout) if done.returncode == 0 else {}


# Peers whose enqueue rate the spawn_rate scenario measures (peers/<name>_spawn.py).
SPAWN_PEERS = ["pgqueuer"]


def run_peer(name: str, url: str, concurrency: int, n: int, timeout: float) -> dict[str, Any]:
    """One throughput run of a peer at `concurrency` on a fresh database."""
    args = [str(concurrency), str(n), str(timeout)]
    return _run_script(name, f"{name}_bench.py", url, f"{concurrency}", args, timeout + 600)


def run_peer_spawn(name: str, url: str, n_single: int, n_batch: int) -> dict[str, Any]:
    """A peer's enqueue rate, one by one and in one batch, on a fresh database."""
    args = [str(n_single), str(n_batch)]
    return _run_script(name, f"{name}_spawn.py", url, "spawn", args, 600)


def _run_script(
    name: str, file: str, url: str, db_suffix: str, args: list[str], timeout: float
) -> dict[str, Any]:
    """Run peers/<file> in the peer's venv on a fresh database; its last JSON line."""
    python = VENVS / name / "bin" / "python"
    script = HERE / "peers" / file
    with temporary_database(url, f"bench_{name}_{db_suffix}") as db_url:
        done = subprocess.run(
            [str(python), str(script), db_url, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(HERE / "peers"),
            env={**os.environ, "PYTHONPATH": str(HERE / "peers")},
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{script.name} exited {done.returncode}: {done.stderr[-3000:] or done.stdout[-2000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result
