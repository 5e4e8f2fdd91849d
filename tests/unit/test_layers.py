"""The layering holds: no import cycle between durable_trio's modules, the pure core
imports neither trio nor psycopg, and the run and context layers never reach up into the
worker. Imports inside ``if TYPE_CHECKING:`` are annotations only and are not followed,
except where a rule below says otherwise."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "durable_trio"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, annotations: bool) -> set[str]:
    """Modules `path` imports (`annotations`: those under TYPE_CHECKING too)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    if not annotations:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(sub) for sub in ast.walk(node))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _graph(*, annotations: bool) -> dict[str, set[str]]:
    return {
        name: {m for m in _imports(path, annotations=annotations) if m in MODULES and m != name}
        - {"durable_trio"}
        for name, path in MODULES.items()
    }


def test_no_import_cycle() -> None:
    graph = _graph(annotations=False)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_core_is_pure() -> None:
    for name, path in MODULES.items():
        if name.startswith("durable_trio._core"):
            imported = _imports(path, annotations=True)
            assert not {m.split(".")[0] for m in imported} & {"trio", "psycopg"}, name


def test_the_run_and_the_context_never_reach_the_worker() -> None:
    graph = _graph(annotations=True)  # not even for annotations
    assert "durable_trio._worker" not in graph["durable_trio._context"]
    assert "durable_trio._worker" not in graph["durable_trio._writer"]
    upward = {"durable_trio._worker", "durable_trio._writer", "durable_trio._context"}
    assert not graph["durable_trio._run"] & upward


def test_the_command_line_uses_the_public_face() -> None:
    for name, path in MODULES.items():
        if name.startswith("durable_trio.cli"):
            private = {
                m
                for m in _imports(path, annotations=True)
                if m.startswith("durable_trio._") and m in MODULES
            }
            allowed = {"durable_trio._ephemeral", "durable_trio._schema", "durable_trio._sql"}
            assert private <= allowed, (name, private - allowed)
