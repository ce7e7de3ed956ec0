"""The shape of the package: its folders are layers, each importing only from the layers below it; the
entry points (the command line, the loop, the launched processes, export) sit on top and nothing below
imports them; the viewers load without the orchestrator; no import cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rationale_loop"

# The subpackages from the bottom up (docs/layout.md). Those on one rung stand side by side and
# import neither each other nor anything above them.
LAYERS = (
    ("config",),
    ("run",),
    ("views",),
    ("data", "models"),
    ("generate",),
    ("judging",),
    ("training",),
    ("phases",),
    ("preflight",),
)
RUNG = {package: rung for rung, packages in enumerate(LAYERS) for package in packages}
# The top: what a person or a launcher runs, and export (a command of its own). Nothing below imports them.
ENTRY_POINTS = {"__init__", "__main__", "cli", "sweep", "loop", "export", "join", "cleanup", "worker", "sample_worker"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_top_holds_the_entry_points_and_the_layers_alone():
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    folders = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert modules == ENTRY_POINTS
    assert folders == set(RUNG)


@pytest.mark.parametrize("package", sorted(RUNG))
def test_each_layer_has_a_docstring_saying_what_it_holds(package):
    docstring = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
    assert docstring and len(docstring.split()) >= 12, package


def test_the_viewers_load_without_the_orchestrator():
    code = ("import sys; import rationale_loop.views.report, rationale_loop.views.compare, rationale_loop.views.html_report, "
            "rationale_loop.views.plots, rationale_loop.export; "
            "print('rationale_loop.loop' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert result.stdout.strip() == "False"


def test_the_orchestrator_is_short():
    """loop.py reads like the recipe: a table of phases and the commands that run them; the work is in phases/."""
    assert len((PACKAGE / "loop.py").read_text().splitlines()) <= 210


def test_no_function_is_longer_than_a_screen_or_so():
    """Long functions hide their steps; the optimizer's step (Adalite's update, written from its paper) is the
    one allowed exception."""
    allowed = {("optim.py", "step")}
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 85 and (path.name, node.name) not in allowed:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


# The import graph of the package: every module of rationale_loop/, and the package's modules each imports,
# at the top or inside a function (a function-local import that closes a cycle is a cycle that only
# import order hides).
def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def package_imports(name: str) -> set[str]:
    """The package's modules that module `name` imports (`from rationale_loop import x` and relative
    imports resolved to the module they name)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: package_imports(name) for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph as its modules in import order (first repeated at the end), or []."""
    done: set[str] = set()
    for start in sorted(graph):
        path: list[str] = []
        on_path: set[str] = set()
        stack = [(start, iter(sorted(graph[start])))]
        if start in done:
            continue
        path.append(start), on_path.add(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop(), path.pop(), on_path.discard(node), done.add(node)
            elif child in on_path:
                return path[path.index(child):] + [child]
            elif child not in done:
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child), on_path.add(child)
    return []


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for module in GRAPH[todo.pop()] - seen:
            seen.add(module)
            todo.append(module)
    return seen


def test_find_cycle_reports_the_cycles_modules():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def layer_of(module: str) -> str | None:
    """The subpackage a module lies in (rationale_loop.run.rundir -> run), None for an entry point."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RUNG) else None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of the graph that climbs: from a layer into an entry point, into a layer above it, or
    into a layer on its own rung."""
    climbing = []
    for module, imported in sorted(graph.items()):
        layer = layer_of(module)
        if layer is None:
            continue
        for target in sorted(imported):
            other = layer_of(target)
            if other == layer:
                continue
            if other is None or RUNG[other] >= RUNG[layer]:
                climbing.append(f"{module} -> {target}")
    return climbing


def test_upward_imports_names_what_climbs():
    graph = {"rationale_loop.run.rundir": {"rationale_loop.config.schema", "rationale_loop.views.report",
                                           "rationale_loop.loop", "rationale_loop.run.records"},
             "rationale_loop.data.sources": {"rationale_loop.models.model"},
             "rationale_loop.loop": {"rationale_loop.phases.train"}}
    assert upward_imports(graph) == ["rationale_loop.data.sources -> rationale_loop.models.model",
                                     "rationale_loop.run.rundir -> rationale_loop.loop",
                                     "rationale_loop.run.rundir -> rationale_loop.views.report"]


def test_each_layer_imports_only_the_layers_below_it():
    """The direction of the architecture, as a test: a module of a layer imports its own folder and the
    layers below, never an entry point (at the top or inside a function), so the layering cannot decay
    one convenient import at a time."""
    climbing = upward_imports(GRAPH)
    assert not climbing, "imports that climb: " + "; ".join(climbing)


def test_config_imports_nothing_above_it():
    """config/schema.py is below every registry: it may lean on errors.py and paths.py, which import nothing back."""
    above = reachable("rationale_loop.config.schema") - {"rationale_loop.config.errors", "rationale_loop.config.paths"}
    assert not above, f"config/schema.py imports {sorted(above)}"


def test_the_registries_never_import_the_config_checks():
    """config_checks.py asks the registries; none of them (nor what they import) may ask it back."""
    registries = GRAPH["rationale_loop.preflight.config_checks"]
    assert {"rationale_loop.training.objectives", "rationale_loop.judging.verify", "rationale_loop.data.formats", "rationale_loop.generate"} <= registries
    holding_a_registry = {name for name, path in MODULES.items() if "Registry(" in path.read_text()} - {"rationale_loop.config.registry"}
    # A registry filled by its package's modules is asked through the package (objectives/__init__.py).
    asked = registries | {module for package in registries if MODULES[package].name == "__init__.py" for module in GRAPH[package]}
    assert holding_a_registry <= asked, "a Registry that config_checks.py does not check"
    for module in registries:
        assert "rationale_loop.preflight.config_checks" not in reachable(module), module


# Every module imported alone, in one fresh interpreter: before each import every rationale_loop module is
# dropped from sys.modules, so each import runs the package's imports from scratch in that module's own
# order (an order-dependent cycle fails here). Third-party modules (torch, transformers) stay loaded
# between them: they are not what this checks, and loading them once keeps the test to seconds.
IMPORT_ALONE = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "rationale_loop" or m.startswith("rationale_loop.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\\n".join(failed))
"""


@pytest.mark.slow
def test_every_module_imports_alone():
    modules = [name for name in MODULES if name != "rationale_loop.__main__"]  # __main__ runs the command line
    result = subprocess.run([sys.executable, "-c", IMPORT_ALONE, *modules], capture_output=True, text=True,
                            cwd=PACKAGE.parent, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", result.stdout
