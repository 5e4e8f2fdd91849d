"""What the README and docs/ name exists: the modules they run with `python -m`."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def runnable(module: str) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    if spec.submodule_search_locations is not None:  # a package: needs its __main__
        return importlib.util.find_spec(f"{module}.__main__") is not None
    return spec.origin is not None and '__name__ == "__main__"' in Path(spec.origin).read_text()


def test_python_m_commands_name_modules_that_run() -> None:
    commands = {
        (doc, module)
        for doc in DOCS
        for module in re.findall(r"python3? -m (durable_trio[\w.]*)", doc.read_text())
    }
    assert commands
    assert [(doc.name, module) for doc, module in commands if not runnable(module)] == []
