"""The package's shape, read statically: no two modules import each other, directly or around a cycle, and the
dependency direction of DESIGN.md holds ("no module reaches up; no two modules import each other").

Imports are read from the source with ``ast``, nothing is imported: ``import a.b``, ``from a import b`` and relative
imports at any depth, at module level, inside functions and under ``if TYPE_CHECKING`` (a type-only import is a
dependency too). ``from . import x`` names the submodule ``x`` when there is one, else the package itself. An import
by a computed name (``importlib.import_module(f"...")``: the CLI's commands, the experiments) is not seen. Importing a
module implicitly runs its parent packages' ``__init__``; only what the source names counts as an edge.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "convcanon"

# Cycles allowed in the import graph: none. Each entry would be one strongly connected component of the import graph
# (modules that all reach each other); the list may only shrink: a new cycle fails the test, and so does an entry that
# no longer matches a cycle exactly.
KNOWN_CYCLES: dict[frozenset[str], str] = {}

# DESIGN.md's dependency direction: (the modules a rule is about, what they must not import, why). A name covers the
# module and everything under it. Above all of them, the CLI: test_only_the_command_line_imports_the_commands.
_TRAINING_AND_ABOVE = ("convcanon.train", "convcanon.parallel", "convcanon.perf", "convcanon.estimate",
                       "convcanon.analysis", "convcanon.deploy", "convcanon.commands", "convcanon.cli")
RULES: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    (("convcanon.io",), ("convcanon",),
     "io is the bottom layer: everything that writes uses it, so it uses nothing of the package"),
    (("convcanon.models", "convcanon.layers", "convcanon.registry"), _TRAINING_AND_ABOVE,
     "models know nothing of training or of the tools built on it"),
    (("convcanon.data",), (*_TRAINING_AND_ABOVE, "convcanon.models", "convcanon.layers", "convcanon.registry"),
     "data sources know nothing of models or training"),
    (("convcanon.train",), ("convcanon.parallel", "convcanon.analysis", "convcanon.perf", "convcanon.deploy",
                            "convcanon.commands", "convcanon.cli"),
     "strategies plug into the run skeleton, never the reverse; perf and analysis use the engine; the CLI is a "
     "layer over train, not under it"),
    (("convcanon.parallel",), ("convcanon.perf", "convcanon.analysis", "convcanon.commands", "convcanon.cli"),
     "strategies plug into the run skeleton; the tools and the CLI sit above them"),
    (("convcanon.deploy",), ("convcanon.parallel", "convcanon.perf", "convcanon.analysis", "convcanon.commands",
                             "convcanon.cli"),
     "using a trained model needs the weights and the data's preprocessing, not the training tools or the CLI"),
]  # fmt: skip


# ------------------------------------------------------------------------------------------------ the import graph


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # file:line of the import statement

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.where})"


def find_modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``package_dir`` (a package is named by its ``__init__``)."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _innermost_module(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, modules: dict[str, Path], shown_as: str) -> list[Edge]:
    """The package modules ``name`` (at ``path``, ``shown_as`` in messages) names in its imports, wherever they stand
    in the file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    edges = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from P import x`` imports the submodule P.x when there is one, else a name defined in P.
            names = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem for alias in node.names]
        else:
            continue
        for target in names:
            target = _innermost_module(target, modules)
            if target is not None and target != name:
                edges.append(Edge(name, target, f"{shown_as}:{node.lineno}"))
    return edges


def import_graph(package_dir: Path) -> dict[str, dict[str, Edge]]:
    """module -> {imported module: the first import statement naming it}."""
    modules = find_modules(package_dir)
    graph: dict[str, dict[str, Edge]] = {}
    for name, path in modules.items():
        graph[name] = {}
        for edge in imports_of(name, path, modules, path.relative_to(package_dir.parent).as_posix()):
            graph[name].setdefault(edge.target, edge)
    return graph


def strongly_connected(graph: dict[str, dict[str, Edge]]) -> list[frozenset[str]]:
    """The groups of two or more modules that all reach each other through imports (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def cycle_through(graph: dict[str, dict[str, Edge]], component: frozenset[str]) -> list[Edge]:
    """One shortest import cycle inside ``component``, from its first module (by name) back to it."""
    start = min(component)
    came_from: dict[str, Edge] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target, edge in sorted(graph[node].items()):
            if target not in component:
                continue
            if target == start:
                path = [edge]
                while path[0].source != start:
                    path.insert(0, came_from[path[0].source])
                return path
            if target not in came_from:
                came_from[target] = edge
                queue.append(target)
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def describe(graph: dict[str, dict[str, Edge]], component: frozenset[str]) -> str:
    cycle = cycle_through(graph, component)
    steps = "\n".join(f"    {edge}" for edge in cycle)
    return f"  {' -> '.join([e.source for e in cycle] + [cycle[0].source])}\n{steps}"


def _within(module: str, names: tuple[str, ...]) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


# ------------------------------------------------------------------------------------------------------- the rules


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, Edge]]:
    return import_graph(PACKAGE_DIR)


def test_no_modules_import_each_other_beyond_the_known_cycles(graph):
    # A known cycle that lost modules is not new: the next test asks for its entry to be narrowed.
    new = [c for c in strongly_connected(graph) if not any(c <= known for known in KNOWN_CYCLES)]
    assert not new, "modules that import each other (break the cycle: move what both need into a lower module):\n" + \
        "\n".join(describe(graph, c) for c in new)


def test_every_known_cycle_still_exists_as_listed(graph):
    # So that KNOWN_CYCLES only shrinks: when a cycle is broken, or loses modules, its entry must go or be narrowed.
    current = strongly_connected(graph)
    stale = [c for c in KNOWN_CYCLES if c not in current]
    narrowed = {c: [n for n in current if n < c] for c in stale}
    assert not stale, "KNOWN_CYCLES lists cycles that no longer exist as listed; update it:\n" + "\n".join(
        f"  {sorted(c)}: " + (f"now {[sorted(n) for n in narrowed[c]]}" if narrowed[c] else "gone: delete the entry")
        for c in stale)


@pytest.mark.parametrize(("sources", "forbidden", "why"), RULES, ids=[r[0][0].split(".")[-1] for r in RULES])
def test_dependency_direction(graph, sources, forbidden, why):
    assert any(_within(m, sources) for m in graph), f"no module {sources}: the rule is about nothing"
    bad = [str(edge) for module, edges in graph.items() if _within(module, sources)
           for target, edge in edges.items() if _within(target, forbidden) and not _within(target, sources)]
    assert not bad, f"{why}:\n  " + "\n  ".join(bad)


def test_only_the_command_line_imports_the_commands(graph):
    cli = ("convcanon.cli", "convcanon.__main__", "convcanon.commands")
    bad = [str(edge) for module, edges in graph.items() if not _within(module, cli)
           for target, edge in edges.items() if _within(target, ("convcanon.commands", "convcanon.cli"))]
    assert not bad, "the CLI is a thin layer over functions a user can also import; nothing below imports it:\n  " + \
        "\n  ".join(bad)


# ------------------------------------------------------------------------------------ the checker on a known package


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_graph_resolves_every_form_of_import_and_finds_the_cycle(tmp_path):
    package = _write(tmp_path, {
        "pkg/__init__.py": "VERSION = 1\n",
        "pkg/a.py": "import os\n\n\ndef f():\n    import pkg.b as b  # inside a function\n    return b\n",
        "pkg/b.py": "from .sub import c\n",  # a submodule, by a relative import
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from ..a import f\n",
        "pkg/sub/d.py": "from .. import VERSION\nfrom . import c\nfrom pkg.sub import c as again\n",
        "pkg/e.py": "import json, pkg.sub.d\n",
    })  # fmt: skip
    graph = import_graph(package)
    assert {m: sorted(edges) for m, edges in graph.items()} == {
        "pkg": [], "pkg.a": ["pkg.b"], "pkg.b": ["pkg.sub.c"], "pkg.sub": [], "pkg.sub.c": ["pkg.a"],
        "pkg.sub.d": ["pkg", "pkg.sub.c"], "pkg.e": ["pkg.sub.d"],
    }  # fmt: skip
    assert graph["pkg.a"]["pkg.b"].where == "pkg/a.py:5"
    assert strongly_connected(graph) == [frozenset({"pkg.a", "pkg.b", "pkg.sub.c"})]
    text = describe(graph, frozenset({"pkg.a", "pkg.b", "pkg.sub.c"}))
    assert text.splitlines()[0].strip() == "pkg.a -> pkg.b -> pkg.sub.c -> pkg.a"
    assert "pkg.sub.c -> pkg.a (pkg/sub/c.py:4)" in text


def test_a_package_and_its_own_module_importing_each_other_is_a_cycle(tmp_path):
    # __init__ re-exports from a submodule that takes a name from the __init__: the classic half-initialized import.
    package = _write(tmp_path, {"pkg/__init__.py": "from .core import run\nLIMIT = 3\n",
                                "pkg/core.py": "from . import LIMIT\n\n\ndef run():\n    return LIMIT\n"})
    assert strongly_connected(import_graph(package)) == [frozenset({"pkg", "pkg.core"})]
