"""The README's nox commands run on any Python the project supports: every session uses
the interpreter nox itself runs under, and an older one is refused with a clear message
(read with a stand-in `nox` module, so the test needs no nox installed)."""

from __future__ import annotations

import runpy
import sys
import types
from pathlib import Path
from typing import Any

import pytest

NOXFILE = Path(__file__).resolve().parents[2] / "noxfile.py"


def load_noxfile(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """Run the noxfile; return each session's keyword arguments to `nox.session`."""
    sessions: dict[str, dict[str, Any]] = {}

    def session(**kwargs: Any) -> Any:
        def register(fn: Any) -> Any:
            sessions[fn.__name__] = kwargs
            return fn

        return register

    fake = types.SimpleNamespace(session=session, options=types.SimpleNamespace())
    monkeypatch.setitem(sys.modules, "nox", fake)
    runpy.run_path(str(NOXFILE))
    return sessions


def test_every_session_runs_on_the_interpreter_nox_runs_under(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sessions = load_noxfile(monkeypatch)
    assert {"lint", "types", "tests", "quickstart"} <= set(sessions)
    assert {name: kwargs.get("python") for name, kwargs in sessions.items()} == dict.fromkeys(
        sessions
    )


def test_a_python_older_than_3_11_is_refused_saying_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "version_info", (3, 10, 13, "final", 0))
    with pytest.raises(SystemExit) as raised:
        load_noxfile(monkeypatch)
    message = str(raised.value.code)
    assert "Python 3.11 or newer" in message
    assert "-m nox" in message
