"""What the README and docs/ name exists: the modules they run with `python -m`, the
durable_trio classes and constants they name, and the members of the library's classes
they point readers to."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def code_spans() -> list[tuple[str, str]]:
    return [
        (doc.name, span) for doc in DOCS for span in re.findall(r"`([^`\n]+)`", doc.read_text())
    ]


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


def resolves(path: str) -> bool:
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        return all((obj := getattr(obj, part, None)) is not None for part in parts[i:])
    return False


def test_durable_trio_classes_and_constants_named_in_docs_exist() -> None:
    """`durable_trio.Name` (capitalised: a class or a constant; lower-case names are also
    logger and metric names) must be importable. A quoted one is a stored string."""
    named = {
        (doc, m[0])
        for doc, span in code_spans()
        for m in re.finditer(r"(?<![\w.\"'])durable_trio(?:\.[a-z_]\w*)*\.[A-Z]\w*", span)
    }
    assert named
    assert sorted((doc, name) for doc, name in named if not resolves(name)) == []


def class_members() -> dict[str, set[str]]:
    """Each class of the library (by name) with what it defines or assigns on self,
    its bases' included."""
    own: dict[str, set[str]] = {}
    bases: dict[str, set[str]] = {}
    for path in (ROOT / "src" / "durable_trio").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            names = own.setdefault(node.name, set())
            for base in node.bases:
                base = base.value if isinstance(base, ast.Subscript) else base
                if isinstance(base, ast.Name):
                    bases.setdefault(node.name, set()).add(base.id)
            for sub in ast.walk(node):
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(sub.name)
                elif isinstance(sub, ast.Attribute) and ast.unparse(sub.value) == "self":
                    names.add(sub.attr)
                elif isinstance(sub, ast.AnnAssign | ast.Assign):
                    targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
                    names.update(t.id for t in targets if isinstance(t, ast.Name))

    def all_of(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        found = set(own.get(name, ()))
        for base in bases.get(name, set()) - seen:
            found |= all_of(base, seen | {name})
        return found

    return {name: all_of(name) for name in own}


def test_members_of_library_classes_named_in_docs_exist() -> None:
    members = class_members()
    named = {
        (doc, cls, attr)
        for doc, span in code_spans()
        for cls, attr in re.findall(r"(?<![\w.])([A-Z]\w*)\.(\w+)", span)
        if cls in members  # other libraries' classes (a peer's Queries) are not ours
    }
    assert len(named) > 10
    assert sorted(f"{doc}: {c}.{a}" for doc, c, a in named if a not in members[c]) == []
