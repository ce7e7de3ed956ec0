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
