"""The code's shape, kept: imports flow one way (no circle anywhere; ``treesearch`` knows nothing
of ``actors`` but in its CLI, and never imports Ray), and functions and classes stay small."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("treesearch", "actors")
MAX_FUNCTION, MAX_CLASS = 60, 250  # lines


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


def _is_type_checking(node: ast.If) -> bool:
    return ast.unparse(node.test).split(".")[-1] == "TYPE_CHECKING"


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (in functions too), except under
    ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {t for t in imports_of(f) if t in modules and t != m} for m, f in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_circle_anywhere():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_treesearch_imports_no_actors_but_its_cli_and_never_ray():
    for module, path in _modules().items():
        if not module.startswith("treesearch."):
            continue
        imported = imports_of(path)
        if module != "treesearch.cli":
            assert not any(m == "actors" or m.startswith("actors.") for m in imported), module
        assert not any(m == "ray" or m.startswith("ray.") for m in imported), module


def long_definitions() -> list[str]:
    out = []
    for module, path in _modules().items():
        if module.startswith("treesearch.training"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                limit = MAX_CLASS
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                limit = MAX_FUNCTION
            else:
                continue
            lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            if lines > limit:
                out.append(f"{module}:{node.lineno} {node.name} ({lines} lines, at most {limit})")
    return out


def test_no_long_function_or_class():
    assert long_definitions() == []
