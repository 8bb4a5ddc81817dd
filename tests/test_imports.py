"""The `instrument` package has no import cycles, counting every import statement in a module:
module level, inside functions, and under `if TYPE_CHECKING:`.

A function-local or type-checking-only import hides a cycle from Python at run time but not from
the reader: the two modules still depend on each other, and the cycle comes back the day someone
hoists the import. So the graph here is built from the AST of every module, with nothing skipped.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "instrument"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its `__init__.py`)."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve_base(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a `from ... import` names (relative imports resolved against `importer`)."""
    if node.level == 0:
        return node.module or ""
    parts = importer.split(".")
    if not is_package:
        parts.pop()  # a module's relative imports start from its package
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def _targets(name: str, importer: str, known: set[str]) -> set[str]:
    """The package modules that importing `name` runs: `name` itself (or its nearest existing
    parent, for `pkg.attr`) and the packages above it that are not above `importer` too (those are
    already running when `importer` runs)."""
    out: set[str] = set()
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        mod = ".".join(parts[:i])
        if mod in known and not importer.startswith(mod + ".") and mod != importer:
            out.add(mod)
    return out


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its source."""
    mods = modules(root, package)
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    graph[mod] |= _targets(alias.name, mod, known)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_base(node, mod, is_package)
                graph[mod] |= _targets(base, mod, known)
                for alias in node.names:  # `from pkg import module`
                    graph[mod] |= _targets(f"{base}.{alias.name}", mod, known)
    return graph


def components(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module: each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is a few dozen modules, so recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) through each component of `graph`."""
    return [_cycle_in(graph, comp) for comp in components(graph)]


def _cycle_in(graph: dict[str, set[str]], comp: frozenset[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first, inside the component)."""
    start = min(comp)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle in component {sorted(comp)}")


def test_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The graph counts function-local, TYPE_CHECKING, relative and `from pkg import module` imports."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub import c\n")
    (pkg / "sub" / "c.py").write_text("from ..a import f\nimport pkg.sub.d\n")
    (pkg / "sub" / "d.py").write_text("")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub", "pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a", "pkg.sub.d"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def _report(found: list[list[str]]) -> str:
    return "import cycles (move the shared names to a leaf module): " + "; ".join(" -> ".join(c) for c in found)


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, _report(found)
