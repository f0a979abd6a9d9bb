"""The dgpu packages form a stack: protocol ← contracts ← node ← bootstrap ← client.

The import graph of every ``dgpu.*`` module is read from the source with ``ast`` (every import
statement counts: module level, inside functions, under ``TYPE_CHECKING``), so a cycle cannot
hide behind a function-level import. An edge goes to the module named (``from a.b import c``
reaches ``a.b.c`` when that is a module, else ``a.b``) and to the packages above it that the
import initialises, except those the importer lives in (they are initialised before it runs, so
a package's ``__init__`` re-exporting its own modules is no cycle).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

import dgpu

ROOT = Path(dgpu.__file__).parent
PACKAGES = ("protocol", "contracts", "node", "bootstrap", "client")
#: which package may not import which (the stack's order; protocol's purity has its own test)
FORBIDDEN = {
    "dgpu.node": ("dgpu.bootstrap", "dgpu.client"),
    "dgpu.bootstrap": ("dgpu.client",),
    "dgpu.contracts": ("dgpu.node", "dgpu.bootstrap", "dgpu.client"),
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        base = ROOT / package
        for path in base.rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(["dgpu", *parts])] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(dgpu module imported, line) for every import statement in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in MODULES else base), node.lineno


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _graph() -> dict[str, dict[str, int]]:
    graph: dict[str, dict[str, int]] = {}
    for module, path in MODULES.items():
        edges: dict[str, int] = {}
        own = {*_ancestors(module), module}
        for target, line in _imported(module, path):
            for reached in [*_ancestors(target), target]:
                if reached in MODULES and reached not in own:
                    edges.setdefault(reached, line)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle through each strongly connected component that has one (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, set(c)) for c in components]


def _one_cycle(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """A shortest cycle inside ``component`` (breadth first from its smallest member)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w in component and w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("a strongly connected component without a cycle")


def _describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    hops = [f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return " → ".join([*hops, cycle[-1]])


def test_the_graph_sees_function_level_and_relative_imports() -> None:
    graph = _graph()
    assert len(MODULES) > 50
    assert "dgpu.client.client" in graph["dgpu.client"]  # `from .client import Client`
    # importing dgpu.node.services.billing initialises the package dgpu.node.services first
    assert "dgpu.node.services" in graph["dgpu.client.client"]
    # a function-level import (inside _solana_wallet) is an edge like any other
    assert "dgpu.contracts.solana_escrow" in _graph_of_package("dgpu.client", graph)


def _graph_of_package(prefix: str, graph: dict[str, dict[str, int]]) -> set[str]:
    return {t for m, edges in graph.items() if m == prefix or m.startswith(prefix + ".") for t in edges}


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycle_among_dgpu_modules() -> None:
    graph = _graph()
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(graph, c) for c in cycles)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_packages_do_not_import_higher_ones(package: str) -> None:
    graph = _graph()
    bad = [f"{m} imports {t} (line {line})" for m, edges in sorted(graph.items())
           if m == package or m.startswith(package + ".")
           for t, line in edges.items()
           if any(t == f or t.startswith(f + ".") for f in FORBIDDEN[package])]
    assert not bad, "\n".join(bad)
