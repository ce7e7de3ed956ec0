"""The shape of the package: the modules that read a run directory (the viewers, export, the saved-config
reader) do it through rundir.py and never import the orchestrator."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rationale_loop"
# Modules below the orchestrator: the run directory's readers, the phases and the training worker.
READERS = ("report", "html_report", "plots", "export", "run_config", "rundir", "worker", "round_start", "task_checks",
           *(f"phases/{path.stem}" for path in sorted((PACKAGE / "phases").glob("*.py"))))


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("module", READERS)
def test_a_reader_of_the_run_directory_never_imports_the_orchestrator(module):
    assert "rationale_loop.loop" not in imported_modules(PACKAGE / f"{module}.py")


def test_the_viewers_load_without_the_orchestrator():
    code = ("import sys; import rationale_loop.report, rationale_loop.html_report, rationale_loop.plots, rationale_loop.export; "
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


def test_config_imports_nothing_above_it():
    """config.py is below every registry: it may lean on errors.py and paths.py, which import nothing back."""
    above = reachable("rationale_loop.config") - {"rationale_loop.errors", "rationale_loop.paths"}
    assert not above, f"config.py imports {sorted(above)}"


def test_the_registries_never_import_the_config_checks():
    """config_checks.py asks the registries; none of them (nor what they import) may ask it back."""
    registries = GRAPH["rationale_loop.config_checks"]
    assert {"rationale_loop.objectives", "rationale_loop.verify", "rationale_loop.data.formats", "rationale_loop.generate"} <= registries
    holding_a_registry = {name for name, path in MODULES.items() if "Registry(" in path.read_text()} - {"rationale_loop.registry"}
    assert holding_a_registry <= registries, "a Registry that config_checks.py does not check"
    for module in registries:
        assert "rationale_loop.config_checks" not in reachable(module), module


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


def test_every_module_imports_alone():
    modules = [name for name in MODULES if name != "rationale_loop.__main__"]  # __main__ runs the command line
    result = subprocess.run([sys.executable, "-c", IMPORT_ALONE, *modules], capture_output=True, text=True,
                            cwd=PACKAGE.parent, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", result.stdout
