"""Looking at a run from the terminal: the accuracy table, and one round's stats and pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from rationale_loop.loop import is_done, read_rounds, round_dir
from rationale_loop.records import read_jsonl


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def rounds_table(run: Path) -> Table:
    table = Table(title=f"held-out accuracy per round  ({run})")
    for column in ("round", "accuracy", "samples", "valid", "correct", "pass@n", "pairs", "train loss"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in read_rounds(run):
        label = "0 (SFT)" if row["round"] == 0 else str(row["round"])
        table.add_row(label, *(_fmt(row.get(c)) for c in ("eval_accuracy", "samples", "valid", "correct", "pass_at_n", "pairs", "train_loss")))
    return table


def print_rounds(run: Path, console: Console | None = None) -> None:
    console = console or Console()
    console.print(rounds_table(run))
    console.print(f"run directory: {run}")


def inspect_round(run: Path, k: int | None, pairs_to_show: int = 3, console: Console | None = None) -> None:
    console = console or Console()
    if k is None:
        k = max((row["round"] for row in read_rounds(run)), default=None)
        if k is None:
            raise SystemExit(f"{run} has no finished round to inspect")
    out = round_dir(run, k)
    if not out.exists():
        raise SystemExit(f"{out} does not exist")
    console.print(f"[bold]{out}[/bold]{'' if is_done(run, k) else '  (not finished)'}")
    metrics_path = out / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        console.print(f"held-out accuracy {_fmt(metrics.get('eval_accuracy'))}, train loss {_fmt(metrics.get('train_loss'))}")
    stats_path = out / "stats.json"
    if not stats_path.exists():
        console.print("no stats.json: round 0 is SFT and has no generations")
        return
    stats = json.loads(stats_path.read_text())
    table = Table(title="generation stats")
    table.add_column("stat")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        table.add_row(key, _fmt(value) if not isinstance(value, dict) else json.dumps(value))
    console.print(table)
    pairs = list(read_jsonl(out / "pairs.jsonl"))
    console.print(f"{len(pairs)} pairs; showing {min(pairs_to_show, len(pairs))}")
    for pair in pairs[:pairs_to_show]:
        table = Table(title=f"{pair['question_id']}  (gold answer: {pair.get('gold_answer', '?')})", show_lines=True)
        table.add_column(f"chosen (sample {pair['chosen_sample_index']})", ratio=1)
        table.add_column(f"rejected (sample {pair['rejected_sample_index']})", ratio=1)
        console.print(pair["prompt"].strip())
        table.add_row(pair["chosen"], pair["rejected"])
        console.print(table)
