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
    assert {"edge_agent.http.sources", "edge_agent.http.base"} <= http
    assert "edge_agent.http.sources.aruba" in {t for t, _, _ in IMPORTS["edge_agent.http.sources"]}
    cli = {t for t, _, _ in IMPORTS["edge_agent.commands.cli"]}  # all of them inside functions
    assert {"edge_agent.runner", "edge_agent.commands.simulate", "edge_agent.commands.demo"} <= cli
    assert "edge_agent.pipeline.core" in {t for t, _, _ in IMPORTS["edge_agent.pipeline"]}


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


# -- the rooms of edge_agent (issue 26) ------------------------------------------

# What each room may import of edge_agent besides itself.  A room is a package
# (its docstring says what it owns); the shell is the few modules at the top.
# Annotation-only imports (``if TYPE_CHECKING:``) count: a door is as wide as
# what its annotations name.
SHELL = {"edge_agent.service", "edge_agent.runner", "edge_agent.reload", "edge_agent.instance"}
ROOM_DEPS: dict[str, set[str]] = {
    "metrics": set(),  # the counters every room updates
    "analytics": set(),  # pure: estimates, the report's table, the chain, policy evaluation
    "pipeline": {"metrics", "analytics"},  # pure: decode, track, decide
    "storage": {"metrics", "analytics", "pipeline"},  # every table the agent owns
    "transport": {"metrics", "analytics", "pipeline", "storage"},  # MQTT, the embedded broker, the push webhook
    "http": {"metrics", "analytics", "pipeline", "storage", "transport"},  # the aiohttp app and every route
    "shell": {"metrics", "analytics", "pipeline", "storage", "transport", "http"},  # composes the rooms, runs them
    "commands": {"metrics", "analytics", "pipeline", "storage", "transport", "http", "shell"},  # the CLI on top
}


def _room(module: str) -> str | None:
    if module in SHELL:
        return "shell"
    if module in ("edge_agent", "edge_agent.__main__"):
        return "commands" if module.endswith("__main__") else None
    parts = module.split(".")
    return parts[1] if parts[0] == "edge_agent" and len(parts) > 1 else None


def test_every_module_of_the_agent_is_in_a_room():
    loose = [m for m in MODULES if _pkg(m) == "edge_agent" and m != "edge_agent" and _room(m) not in ROOM_DEPS]
    assert not loose, f"modules outside every room (add them to one, or name a new room here): {loose}"



def test_rooms_import_only_the_rooms_below():
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line} ({_room(m)}) imports {t} ({_room(t)})"
           for m, imps in IMPORTS.items() if _pkg(m) == "edge_agent" and _room(m)
           for t, _, line in imps
           if _pkg(t) == "edge_agent" and _room(t) and _room(t) != _room(m) and _room(t) not in ROOM_DEPS[_room(m)]]
    assert not bad, "a room reaches up or sideways:\n" + "\n".join(bad)



def test_no_circles_between_modules_even_through_annotations():
    graph = {m: {t for t, _, _ in imps if _pkg(t) == "edge_agent" and t != m}
             for m, imps in IMPORTS.items() if _pkg(m) == "edge_agent"}
    # A package's __init__ re-exporting its own modules is not a circle of the design.
    for m in graph:
        graph[m] = {t for t in graph[m] if not (m.startswith(t + ".") and MODULES[t].name == "__init__.py")}
    assert not _cycles(graph), f"import circles (annotation imports included): {_cycles(graph)}"


def test_each_room_says_what_it_owns():
    for room in ("pipeline", "storage", "transport", "http", "commands"):
        doc = ast.get_docstring(ast.parse((ROOT / "edge_agent" / room / "__init__.py").read_text()))
        assert doc and "import" in doc, f"edge_agent/{room}/__init__.py needs a docstring: what it owns, what it may import"


def test_no_folder_holds_more_than_twelve_modules():
    for pkg in PACKAGES:
        for folder in [ROOT / pkg, *[p for p in (ROOT / pkg).rglob("*") if p.is_dir() and p.name != "__pycache__"]]:
            mods = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
            assert len(mods) <= 12, f"{folder.relative_to(ROOT)} holds {len(mods)} modules; split it into rooms"


def _sizes(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            yield "class", node.name, node.end_lineno - node.lineno + 1, node.lineno
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield "function", node.name, node.end_lineno - node.lineno + 1, node.lineno


def test_units_of_a_readable_size():
    """No class over 400 lines, no function over 120 (issue 26)."""
    limits = {"class": 400, "function": 120}
    big = [f"{path.relative_to(ROOT)}:{line} {kind} {name} is {n} lines (limit {limits[kind]})"
           for path in MODULES.values() for kind, name, n, line in _sizes(path) if n > limits[kind]]
    assert not big, "\n".join(big)
