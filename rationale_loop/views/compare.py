"""Runs side by side (`make compare`): each round's held-out accuracy, pairs and loss per run, the runs
forked from a base found by their fork records, and a warning where runs were scored on other questions.

Every text that came from a run's files reaches the terminal through terminal.py, as in report.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from rationale_loop.config.paths import shown
from rationale_loop.run.records import read_fork_record
from rationale_loop.run.rundir import FORK, read_rounds, round_dir
from rationale_loop.views.report import accuracy_cell, format_value, output_console
from rationale_loop.views.terminal import plain, visible


COMPARED = (("eval_accuracy", "held-out accuracy ± SE"), ("pairs", "pairs mined"), ("train_loss", "mean training loss"))


def warn(message: str) -> None:
    print(f"rationale_loop: warning: {visible(message)}", file=sys.stderr, flush=True)


def _fork_origin(record: Path) -> Path | None:
    """Where the fork recorded in `record` came from; None, with a warning naming the file, when the
    record cannot be read: one damaged fork.json must not hide every other run."""
    try:
        origin = read_fork_record(record)["from"]
        if not isinstance(origin, str) or not origin:
            raise ValueError(f"'from' is {origin!r}, not a round directory")
        return Path(origin)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        reason = "no 'from' key" if isinstance(error, (KeyError, TypeError)) else str(error).splitlines()[0]
        warn(f"skipped {record}: not a readable fork record ({reason})")
        return None


def forks_of(base: Path, root: Path) -> list[Path]:
    """Runs under `root` (two levels deep: sweeps nest their jobs) forked from a round of `base`."""
    base = base.resolve()
    found = []
    for record in sorted([*root.glob(f"*/{FORK}"), *root.glob(f"*/*/{FORK}")]):
        origin = _fork_origin(record)
        if origin is not None and origin.parent == base:
            found.append(record.parent)
    return found


def resolve_run(name: str | Path, root: Path) -> Path | None:
    """A run given as a path (outputs/runs/a) or as a name under `root` (a, or sweep/job): the path
    when it is a run directory, else the run of that name; None when neither exists."""
    given, named = Path(name), Path(root) / name
    for candidate in (given, named):
        if candidate.is_dir() and ((candidate / "rounds.jsonl").exists() or round_dir(candidate, 0).exists()):
            return candidate
    return next((candidate for candidate in (given, named) if candidate.is_dir()), None)


def _eval_set(run: Path, rows: dict[int, dict[str, Any]]) -> tuple[str, str]:
    """(eval size, task) of a run: the held-out questions its rounds were scored on, and its task config
    (from the last round's config.yaml) as text to compare; "?" where unknown."""
    sizes = sorted({row.get("eval_questions") for row in rows.values() if row.get("eval_questions") is not None})
    size = "/".join(map(str, sizes)) or "?"
    task = "?"
    for k in sorted(rows, reverse=True):
        saved = round_dir(run, k) / "config.yaml"
        if saved.exists():
            try:
                from omegaconf import OmegaConf

                task = json.dumps(OmegaConf.to_container(OmegaConf.load(saved).get("task")), sort_keys=True)
            except Exception as error:  # a damaged config.yaml: the task is unknown, the run still shown
                warn(f"{saved}: cannot read its task ({type(error).__name__})")
            break
    return size, task


def _task_name(task: str) -> str:
    try:
        fields = json.loads(task)
        return f"{fields.get('source')}" + (f", eval_size={fields.get('eval_size')}" if "eval_size" in fields else "")
    except (ValueError, AttributeError):
        return "unknown task"


def compare_runs(runs: list[Path], console: Console | None = None) -> None:
    """One table per metric: a row per run, a column per round; held-out accuracy with its standard
    error and each run's eval size, runs scored on a different eval set marked. Rounds a fork shares
    with its base (links to the base's rounds) are shown dim. A run whose rounds.jsonl cannot be read
    is left out with a warning."""
    console = console or output_console()
    runs = list(dict.fromkeys(shown(run) for run in runs))  # one form, whether given absolute or relative
    rows: dict[Path, dict[int, dict[str, Any]]] = {}
    for run in runs:
        try:
            rows[run] = {row["round"]: row for row in read_rounds(run)}
        except (OSError, ValueError, KeyError, TypeError) as error:
            warn(f"skipped {run}: its rounds.jsonl cannot be read ({str(error).splitlines()[0] if str(error) else type(error).__name__})")
    last = max((k for by_round in rows.values() for k in by_round), default=-1)
    if last < 0:
        raise SystemExit(f"none of {', '.join(map(str, runs))} has a finished round")
    common = _common_prefix([str(run) for run in rows])
    evals = {run: _eval_set(run, by_round) for run, by_round in rows.items()}
    first = next(iter(rows))  # the base run, with --forks-of
    differs = {run for run, key in evals.items() if key != evals[first]}
    for key, title in COMPARED:
        table = Table(title=title)
        table.add_column("run", overflow="fold")
        if key == "eval_accuracy":
            table.add_column("eval n", justify="right", no_wrap=True)
        for k in range(last + 1):
            header = "0 (SFT)" if k == 0 else str(k)
            table.add_column(header, justify="right", min_width=len(header))
        for run, by_round in rows.items():
            cells: list[Any] = []
            for k in range(last + 1):
                text = (accuracy_cell(by_round[k]) if key == "eval_accuracy" else format_value(by_round[k].get(key))) if k in by_round else ""
                cells.append(Text(text, style="dim" if round_dir(run, k).is_symlink() else ""))
            name = plain(str(run)[len(common):] or str(run))
            if key == "eval_accuracy":
                if run in differs:
                    name.append(f"  ⚠ other eval set than {visible(str(first)[len(common):] or first)}", style="bold red")
                cells.insert(0, Text(evals[run][0], style="bold red" if run in differs else ""))
            table.add_row(name, *cells)
        console.print(table)
    if differs:
        console.print(Text(
            "⚠ warning: not every run was scored on the same eval set; their accuracies do not compare: "
            + "; ".join(f"{visible(run)}: {evals[run][0]} questions of {_task_name(evals[run][1])}" for run in rows),
            style="bold red"))
    console.print(plain(f"runs under {common or '/'}; ± one binomial standard error, sqrt(p(1-p)/n), n = eval n; "
                        "dim: a round shared with the run it was forked from"))


def _common_prefix(paths: list[str]) -> str:
    """The directory all paths share, with its trailing slash, so the table shows only what differs;
    "" when they share none but the root."""
    if len(paths) < 2 or len({os.path.isabs(path) for path in paths}) > 1:  # runs below the working directory and elsewhere
        return ""
    prefix = os.path.commonpath(paths)
    return "" if prefix in ("", "/") else prefix.rstrip("/") + "/"
