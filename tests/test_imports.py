"""The package's import graph: no cycles, and nobody outside ``autoprune.pruning`` reaches into its private modules.

Read from the source with ``ast``, not by importing, so that every import counts: module-level
ones and those inside functions (a function-level import that closes a cycle hides it from
import-time errors, not from the design). ``from pkg import name`` is an edge to the submodule
``pkg.name`` when there is one, otherwise to ``pkg`` itself (its ``__init__``); so a package that
re-exports its private modules is not, by that alone, a cycle with them. Imports under
``if TYPE_CHECKING:`` never run: they count for the privacy rule, not for cycles.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "autoprune"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
ENGINE = "autoprune.pruning"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    typing_only: bool
    via: str = ""  # the submodule imported, when the edge is to the package it initialises first

    def __str__(self) -> str:
        notes = [f"line {self.line}"] + [f"importing {self.via}"] * bool(self.via) + ["TYPE_CHECKING"] * self.typing_only
        return f"{self.source} -> {self.target} ({', '.join(notes)})"


def _modules() -> dict[str, Path]:
    """Dotted name of every module of the package, ``__init__`` files named after their package."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, typing_only: bool = False):  # noqa: ANN202 - a generator of (node, typing_only)
    """Every Import/ImportFrom node anywhere in ``tree``, and whether it sits under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, typing_only
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), typing_only)
        else:
            yield from _imports(node, typing_only)


def _edges(modules: dict[str, Path]) -> list[Edge]:
    edges = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node, typing_only in _imports(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    parts = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(parts[: len(parts) - node.level + 1])
                    origin = f"{base}.{node.module}" if node.module else base
                else:
                    origin = node.module or ""
                for alias in node.names:
                    sub = f"{origin}.{alias.name}"
                    targets.append(sub if sub in modules else origin)
            for target in dict.fromkeys(t for t in targets if t in modules and t != name):
                edges.append(Edge(name, target, node.lineno, typing_only))
                edges += [Edge(name, p, node.lineno, typing_only, via=target) for p in _initialised(target, name)]
    return list(dict.fromkeys(edges))


def _initialised(target: str, source: str) -> list[str]:
    """The packages above ``target`` that importing it from ``source`` runs first: those not above ``source``."""
    parts = target.split(".")
    above = [".".join(parts[:i]) for i in range(1, len(parts))]
    return [p for p in above if not (source == p or source.startswith(p + "."))]


def _cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_graph_reads_every_module() -> None:
    modules = _modules()
    assert {"autoprune", ENGINE, "autoprune.policy", "autoprune.env"} <= set(modules)
    edges = _edges(modules)
    # the resolution rules, on imports that exist: a submodule by name, a package's re-export, relative levels
    assert any(e.source == "autoprune.env" and e.target == "autoprune.pruning" for e in edges)
    assert any(e.source == "autoprune.pruning" and e.target.startswith("autoprune.pruning._") for e in edges)
    assert not any(e.source.startswith("autoprune.pruning._") and e.target == ENGINE for e in edges)


def test_no_import_cycles() -> None:
    edges = [e for e in _edges(_modules()) if not e.typing_only]
    cycles = _cycles(edges)
    lines = []
    for component in cycles:
        inside = set(component)
        lines.append("cycle: " + ", ".join(component))
        lines += [f"    {e}" for e in edges if e.source in inside and e.target in inside]
    assert not cycles, "import cycles inside autoprune:\n" + "\n".join(lines)


def test_nothing_outside_the_engine_imports_its_private_modules() -> None:
    private = [e for e in _edges(_modules())
               if e.target.startswith(f"{ENGINE}._") and not e.source.startswith(f"{ENGINE}.") and e.source != ENGINE]
    assert not private, ("import the public names of autoprune.pruning instead:\n"
                         + "\n".join(f"    {e}" for e in private))
