"""Every arrow points down (DESIGN.md, "Two choices keep every arrow pointing down").

Pure: the product's sources are parsed with ``ast``, nothing is imported.
Every ``import`` / ``from ... import`` counts, at module level and inside
functions alike (an import moved into a function still runs, it only hides
the circle).  Imports under ``if TYPE_CHECKING:`` never run; they count for
the rules between packages but not for circles inside one (an annotation may
name the class that composes the module).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("geometry", "store_config", "sync", "edge_agent", "simulator")

# Which project packages each package may import (besides itself).
ALLOWED_DEPS: dict[str, set[str]] = {
    "geometry": set(),  # imports nothing of the project
    "store_config": {"geometry"},
    "sync": {"store_config", "geometry"},  # never edge_agent: the composition root hands it what it needs
    "simulator": {"store_config", "geometry"},  # a pure client of the contract: never edge_agent
    "edge_agent": {"sync", "store_config", "geometry", "simulator"},  # `demo` and `simulate` drive the simulator
}

# Deliberate circles inside a package, each a lazy import kept for start-up
# cost, as frozensets of the modules in the circle.  None today.
ALLOWED_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path) -> list[tuple[str, bool, int]]:
    """``(imported project module, type-checking only, line)`` for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: list[tuple[str, bool, int]] = []

    def target(mod: str) -> str | None:
        """The project module ``mod`` names (or the package holding it)."""
        while mod and mod not in MODULES:
            mod = mod.rpartition(".")[0]
        return mod or None

    def visit(node: ast.AST, tc: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, tc)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                t = target(alias.name)
                if t:
                    found.append((t, tc, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                t = sub if sub in MODULES else target(mod)
                if t:
                    found.append((t, tc, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, tc)

    visit(tree, False)
    return sorted({(t, tc, line) for t, tc, line in found if t != name}, key=lambda x: (x[2], x[0]))


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _pkg(module: str) -> str:
    return module.partition(".")[0]


@pytest.mark.parametrize("pkg", PACKAGES)
def test_packages_import_only_the_layers_below(pkg):
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {t}"
           for m, imps in IMPORTS.items() if _pkg(m) == pkg
           for t, _, line in imps if _pkg(t) != pkg and _pkg(t) not in ALLOWED_DEPS[pkg]]
    assert not bad, f"{pkg} may import only {sorted(ALLOWED_DEPS[pkg]) or 'nothing'} of the project:\n" + "\n".join(bad)


def test_package_dependencies_form_no_circle():
    deps = {pkg: {_pkg(t) for m, imps in IMPORTS.items() if _pkg(m) == pkg for t, _, _ in imps} - {pkg}
            for pkg in PACKAGES}
    assert not _cycles(deps), f"packages import each other back: {_cycles(deps)}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_import_circles_inside_a_package(pkg):
    graph = {m: {t for t, tc, _ in imps if not tc and _pkg(t) == pkg}
             for m, imps in IMPORTS.items() if _pkg(m) == pkg}
    found = [c for c in _cycles(graph) if frozenset(c) not in ALLOWED_CYCLES]
    detail = [", ".join(c) + ":\n  " + "\n  ".join(
        f"{MODULES[m].relative_to(ROOT)}:{line} imports {t}"
        for m in c for t, tc, line in IMPORTS[m] if t in c and not tc) for c in found]
    assert not found, f"import circles in {pkg} (function-level imports count too):\n" + "\n".join(detail)


def test_the_checker_sees_function_level_and_relative_imports():
    """The walk is only as good as what it finds: spot-check known edges."""
    http = {t for t, _, _ in IMPORTS["edge_agent.http.app"]}
    assert {"edge_agent.service", "edge_agent.http.sources", "edge_agent.http.base"} <= http
    assert "edge_agent.http.sources.aruba" in {t for t, _, _ in IMPORTS["edge_agent.http.sources"]}
    cli = {t for t, _, _ in IMPORTS["edge_agent.commands.cli"]}  # all of them inside functions
    assert {"edge_agent.runner", "edge_agent.commands.simulate", "edge_agent.commands.demo"} <= cli
    assert ("edge_agent.service", True) in {(t, tc) for t, tc, _ in IMPORTS["edge_agent.http.base"]}


IO_MODULES = {"asyncio", "paho", "aiohttp", "sqlite3", "socket", "threading", "time", "datetime.now"}


def _external(path: Path) -> set[str]:
    """Top-level names of every module a file imports (type-checking imports aside)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return names


def test_the_pipeline_core_does_no_io_and_reads_no_clock():
    """edge_agent.pipeline and everything it imports of the project at run time:
    no asyncio, paho, aiohttp, sqlite3, socket, threading or time (DESIGN.md: the
    functional core; time is a parameter)."""
    seen, todo = set(), ["edge_agent.pipeline"] + [m for m in MODULES if m.startswith("edge_agent.pipeline.")]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += [t for t, tc, _ in IMPORTS[m] if not tc]
    bad = {m: sorted(_external(MODULES[m]) & IO_MODULES) for m in sorted(seen)}
    bad = {m: v for m, v in bad.items() if v}
    assert "edge_agent.pipeline.decisions" in seen and "geometry.tracking" in seen  # the walk did reach the core
    assert not bad, f"the pipeline reaches I/O or the clock: {bad}"
