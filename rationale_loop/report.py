"""Looking at a run from the terminal: the accuracy table, and one round's stats and pairs."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

from rationale_loop.loop import FORK, is_done, read_rounds, round_dir
from rationale_loop.records import Generation, JsonlRecords, Pair, group_by


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def standard_error(accuracy: float | None, questions: int | None) -> float | None:
    """The binomial standard error of an accuracy measured on `questions` questions."""
    if accuracy is None or not questions:
        return None
    return math.sqrt(accuracy * (1.0 - accuracy) / questions)


def rounds_table(run: Path) -> Table:
    """Held-out accuracy with its standard error per round, what the round sampled and trained on, and
    whether its ranking reached the weights: its own pairs ranked right, their margin and the chosen
    side's score, before -> after its training."""
    table = Table(title=f"held-out accuracy per round  ({run})")
    columns = ("round", "accuracy ± SE", "samples", "correct", "pass@n", "pairs", "train items", "steps",
               "rank term first -> last", "own pairs ranked right", "margin s_c - s_r", "chosen s_c", "train loss")
    for column in columns:
        table.add_column(column, justify="right", no_wrap=True)
    for row in read_rounds(run):
        label = "0 (SFT)" if row["round"] == 0 else str(row["round"])
        error = standard_error(row.get("eval_accuracy"), row.get("eval_questions"))
        accuracy = format_value(row.get("eval_accuracy")) + ("" if error is None else f" ± {error:.3f}")
        table.add_row(
            label, accuracy, *(format_value(row.get(c)) for c in ("samples", "correct", "pass_at_n", "pairs", "train_items", "train_steps")),
            _change(row, "rank_term_first", "rank_term_last"),
            _change(row, "pairs_ranked_right_before", "pairs_ranked_right_after"),
            _change(row, "pair_margin_before", "pair_margin_after"),
            _change(row, "chosen_score_before", "chosen_score_after"),
            format_value(row.get("train_loss")),
        )
    return table


def _change(row: dict[str, Any], before: str, after: str) -> str:
    if row.get(before) is None and row.get(after) is None:
        return "-"
    return f"{format_value(row.get(before))} -> {format_value(row.get(after))}"


def output_console() -> Console:
    """The terminal as it is; piped to a file or a CI log, wide enough that no column of a round's table
    is cut to "accur…" (rich would assume 80 columns)."""
    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 200))


def print_rounds(run: Path, console: Console | None = None) -> None:
    console = console or output_console()
    console.print(rounds_table(run))
    console.print(f"run directory: {run}")


@dataclass(frozen=True)
class InspectFilter:
    """What `make inspect` shows of a round: one page of pairs, of invalid samples, or of questions
    with no correct sample, optionally only those of one question."""

    question: str | None = None
    invalid: bool = False
    unsolved: bool = False
    page: int = 1
    per_page: int = 3


def inspect_round(run: Path, k: int | None, view: InspectFilter = InspectFilter(), console: Console | None = None) -> None:
    console = console or output_console()
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
        console.print(f"held-out accuracy {format_value(metrics.get('eval_accuracy'))}, train loss {format_value(metrics.get('train_loss'))}")
    if not (out / "generations.jsonl").exists():
        console.print("no generations.jsonl: round 0 is SFT and samples nothing (or the round has not sampled yet)")
        return
    generations = JsonlRecords(out / "generations.jsonl", Generation)
    pairs = JsonlRecords(out / "pairs.jsonl", Pair) if (out / "pairs.jsonl").exists() else []
    if view.question is None and not (view.invalid or view.unsolved):
        console.print(_stats_table(out, generations, pairs))
    if view.invalid:
        _show_invalid(generations, view, console)
    elif view.unsolved:
        _show_unsolved(generations, view, console)
    else:
        if view.question is not None:
            _show_question_samples(generations, view.question, console)
        _show_pairs(pairs, view, console)


def _page(items: list[Any], view: InspectFilter, what: str, console: Console) -> list[Any]:
    """The items of page `view.page`, saying where they sit in the whole and how to get the next page."""
    pages = max(1, -(-len(items) // view.per_page))
    if not 1 <= view.page <= pages:
        raise SystemExit(f"inspect.page={view.page} is out of range: {len(items)} {what} make {pages} page(s)")
    first = (view.page - 1) * view.per_page
    shown = items[first : first + view.per_page]
    where = f"{what} {first + 1}-{first + len(shown)} of {len(items)}" if shown else f"no {what}"
    more = f"; next: inspect.page={view.page + 1}" if view.page < pages else ""
    scope = f" of question {view.question}" if view.question else ""
    console.print(f"[bold]{where}{scope}[/bold] (page {view.page} of {pages}, inspect.pairs={view.per_page} per page{more})")
    return shown


def _stats_table(out: Path, generations: Iterable[Generation], pairs: Iterable[Pair]) -> Table:
    stats = json.loads((out / "stats.json").read_text()) if (out / "stats.json").exists() else {}
    table = Table(title="generation stats")
    table.add_column("stat")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        table.add_row(key, format_value(value) if not isinstance(value, dict) else json.dumps(value))
    chosen, rejected = pair_lengths(generations, pairs)
    for side, lengths in (("chosen", chosen), ("rejected", rejected)):
        if lengths:
            table.add_row(f"{side} tokens (mean / median / max)",
                          f"{statistics.mean(lengths):.1f} / {statistics.median(lengths):.0f} / {max(lengths)}")
    return table


def pair_lengths(generations: Iterable[Generation], pairs: Iterable[Pair]) -> tuple[list[int], list[int]]:
    """Token counts of every pair's chosen and rejected completion, from the samples they came from."""
    tokens = {(g.question_id, g.sample_index): g.num_tokens for g in generations}
    chosen, rejected = [], []
    for pair in pairs:
        chosen.append(tokens[(pair.question_id, pair.chosen_sample_index)])
        rejected.append(tokens[(pair.question_id, pair.rejected_sample_index)])
    return chosen, rejected


def _show_pairs(pairs: Iterable[Pair], view: InspectFilter, console: Console) -> None:
    selected = [p for p in pairs if view.question in (None, p.question_id)]
    for pair in _page(selected, view, "pairs", console):
        table = Table(title=f"{pair.question_id}  (gold answer: {pair.gold_answer or '?'})", show_lines=True)
        table.add_column(f"chosen (sample {pair.chosen_sample_index})", ratio=1)
        table.add_column(f"rejected (sample {pair.rejected_sample_index})", ratio=1)
        console.print(pair.prompt.strip())
        table.add_row(pair.chosen, pair.rejected)
        console.print(table)


def _show_question_samples(generations: Iterable[Generation], question: str, console: Console) -> None:
    samples = [g for g in generations if g.question_id == question]
    if not samples:
        raise SystemExit(f"inspect.question={question!r}: no such question in this round's generations.jsonl")
    console.print(samples[0].prompt.strip())
    table = Table(title=f"{question}: {len(samples)} samples (gold answer: {samples[0].gold})", show_lines=True)
    for column in ("sample", "answer", "valid", "correct", "tokens", "completion"):
        table.add_column(column, overflow="fold")
    for g in samples:
        table.add_row(str(g.sample_index), format_value(g.answer), format_value(g.valid), format_value(g.correct), str(g.num_tokens),
                      g.completion if g.valid else f"{g.completion}\n[red]invalid: {g.invalid_reason}[/red]")
    console.print(table)


def _show_invalid(generations: Iterable[Generation], view: InspectFilter, console: Console) -> None:
    invalid = [g for g in generations if not g.valid and view.question in (None, g.question_id)]
    table = Table(title="invalid samples", show_lines=True)
    for column in ("question", "sample", "why", "tokens", "completion"):
        table.add_column(column, overflow="fold")
    for g in _page(invalid, view, "invalid samples", console):
        table.add_row(g.question_id, str(g.sample_index), g.invalid_reason or "", str(g.num_tokens), g.completion)
    console.print(table)


def _show_unsolved(generations: Iterable[Generation], view: InspectFilter, console: Console) -> None:
    unsolved = [
        group for group in group_by(generations, "question_id")
        if not any(g.correct for g in group) and view.question in (None, group[0].question_id)
    ]
    table = Table(title="questions with no correct sample", show_lines=True)
    for column in ("question", "gold", "answers given (valid samples)", "invalid"):
        table.add_column(column, overflow="fold")
    for group in _page(unsolved, view, "unsolved questions", console):
        answers = Counter(g.answer for g in group if g.valid)
        given = ", ".join(f"{answer} x{count}" for answer, count in answers.most_common()) or "-"
        question = group[0].prompt.strip()
        table.add_row(f"{group[0].question_id}\n{question}", group[0].gold, given, str(sum(not g.valid for g in group)))
    console.print(table)


# -- runs side by side ----------------------------------------------------------------------------
COMPARED = (("eval_accuracy", "held-out accuracy"), ("pairs", "pairs mined"), ("train_loss", "mean training loss"))


def forks_of(base: Path, root: Path) -> list[Path]:
    """Runs under `root` (two levels deep: sweeps nest their jobs) forked from a round of `base`."""
    base = base.resolve()
    found = []
    for record in sorted([*root.glob(f"*/{FORK}"), *root.glob(f"*/*/{FORK}")]):
        origin = Path(json.loads(record.read_text())["from"])
        if origin.parent == base:
            found.append(record.parent)
    return found


def compare_runs(runs: list[Path], console: Console | None = None) -> None:
    """One table per metric: a row per run, a column per round. Rounds a fork shares with its base
    (links to the base's rounds) are shown dim."""
    console = console or output_console()
    runs = [Path(os.path.relpath(run.resolve())) for run in runs]  # one form, whether given absolute or relative
    rows = {run: {row["round"]: row for row in read_rounds(run)} for run in runs}
    last = max((k for by_round in rows.values() for k in by_round), default=-1)
    if last < 0:
        raise SystemExit(f"none of {', '.join(map(str, runs))} has a finished round")
    common = _common_prefix([str(run) for run in runs])
    for key, title in COMPARED:
        table = Table(title=title)
        table.add_column("run", overflow="fold")
        for k in range(last + 1):
            table.add_column("0 (SFT)" if k == 0 else str(k), justify="right", no_wrap=True)
        for run, by_round in rows.items():
            cells = []
            for k in range(last + 1):
                text = format_value(by_round[k].get(key)) if k in by_round else ""
                cells.append(f"[dim]{text}[/dim]" if round_dir(run, k).is_symlink() else text)
            table.add_row(str(run)[len(common):] or str(run), *cells)
        console.print(table)
    console.print(f"runs under {common or '/'}; dim: a round shared with the run it was forked from")


def _common_prefix(paths: list[str]) -> str:
    """The directory all paths share, with its trailing slash, so the table shows only what differs;
    "" when they share none but the root."""
    if len(paths) < 2:
        return ""
    prefix = os.path.commonpath(paths)
    return "" if prefix in ("", "/") else prefix.rstrip("/") + "/"
