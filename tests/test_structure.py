"""The code's shape holds: no import cycles (type-hint imports included), modules and classes stay
small or say why. (A schedule family being one entry per side: tests/test_schedules.py.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lrctl"
# The "about 450" and "about 300": a few lines of slack, then a reason is due.
MAX_MODULE_LINES = 460
MAX_CLASS_LINES = 310


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.glob("*.py"))}


def _imports(tree: ast.Module, known: set[str]) -> set[str]:
    """Every lrctl module ``tree`` imports: at module level, under TYPE_CHECKING, inside functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "lrctl":
                found |= {a.name for a in node.names if a.name in known}
            elif node.module.startswith("lrctl."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("lrctl.")}
    return found & known


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan).

    >>> find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}})
    [['a', 'b']]
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles_type_hints_included():
    modules = _modules()
    graph = {name: _imports(tree, set(modules)) - {name} for name, tree in modules.items()}
    assert find_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", sorted(p.stem for p in PACKAGE.glob("*.py")))
def test_a_long_module_or_class_says_why(name):
    """Over ~450 lines a module, over ~300 a class, says in its docstring why ("Size: ...")."""
    source = (PACKAGE / f"{name}.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES:
        assert "Size:" in (ast.get_docstring(tree) or ""), f"lrctl/{name}.py has {lines} lines and no reason"
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_CLASS_LINES:
                assert "Size:" in (ast.get_docstring(node) or ""), f"{name}.{node.name} has {length} lines"
