"""The shape of the package: the modules that read a run directory (the viewers, export, the saved-config
reader) do it through rundir.py and never import the orchestrator."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rationale_loop"
READERS = ("report", "html_report", "plots", "export", "run_config", "rundir")


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
