"""Looking at a run from the terminal: the accuracy table, and one round's stats and pairs (runs side by
side: compare.py).

Every text that came from data or from a model (prompts, completions, answers, question ids) reaches
the terminal through rationale_loop/views/terminal.py: control characters written out, never parsed as markup.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from rationale_loop.config.errors import ConfigError
from rationale_loop.run.rundir import is_done, next_round, read_rounds, round_dir, round_label, with_base_row
from rationale_loop.run.records import Generation, JsonlRecords, Pair, group_by, read_json, row_error
from rationale_loop.views.terminal import plain, visible


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


def accuracy_cell(row: dict[str, Any]) -> str:
    error = standard_error(row.get("eval_accuracy"), row.get("eval_questions"))
    return format_value(row.get("eval_accuracy")) + ("" if error is None else f" ± {error:.3f}")


def _change(row: dict[str, Any], before: str, after: str) -> str:
    if row.get(before) is None and row.get(after) is None:
        return "-"
    return f"{format_value(row.get(before))} -> {format_value(row.get(after))}"


def _value(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda row: format_value(row.get(key))


# The terminal's rounds table, in the order shown. The number is the column's rank when the terminal is
# too narrow for all of them: the narrowest table keeps the lowest ranks (report.html has every column).
ROUND_COLUMNS: tuple[tuple[str, int, Callable[[dict[str, Any]], str]], ...] = (
    ("round", 0, lambda row: round_label(row["round"])),
    ("accuracy ± SE", 1, accuracy_cell),
    ("samples", 6, _value("samples")),
    ("correct", 4, _value("correct")),
    ("pass@n", 5, _value("pass_at_n")),
    ("pairs", 2, _value("pairs")),
    ("train items", 9, _value("train_items")),
    ("steps", 10, _value("train_steps")),
    ("rank term first -> last", 11, lambda row: _change(row, "rank_term_first", "rank_term_last")),
    ("own pairs ranked right", 3, lambda row: _change(row, "pairs_ranked_right_before", "pairs_ranked_right_after")),
    ("margin s_c - s_r", 7, lambda row: _change(row, "pair_margin_before", "pair_margin_after")),
    ("chosen s_c", 8, lambda row: _change(row, "chosen_score_before", "chosen_score_after")),
    ("train loss", 12, _value("train_loss")),
)
#: Columns shown after those only when a round has their key: (column, rank, cell, key).
OPTIONAL_COLUMNS = (
    ("right answer, wrong step", 13, _value("right_answer_wrong_chain"), "right_answer_wrong_chain"),  # verify.chain
)
WIDE_HINT = "inspect.wide=true"


def _table(title: str, columns: list[tuple[str, list[str]]]) -> Table:
    table = Table(title=plain(title))
    for header, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for cells in zip(*(values for _, values in columns)):
        table.add_row(*map(plain, cells))
    return table


def _width(table: Table, console: Console) -> int:
    return Measurement.get(console, console.options.update(width=10_000), table).maximum


def rounds_table(run: Path, width: int | None = None, wide: bool = False) -> tuple[Table, list[str]]:
    """Held-out accuracy with its standard error per round, what the round sampled and trained on, and
    whether its ranking reached the weights: its own pairs ranked right, their margin and the chosen
    side's score, before -> after its training. Within `width` columns (unless `wide`): the most
    important columns that fit, each with its whole header; returns the table and the headers left out."""
    rows = with_base_row(read_rounds(run))
    present = [(header, rank, cell) for header, rank, cell, key in OPTIONAL_COLUMNS if any(row.get(key) is not None for row in rows)]
    columns = [(header, rank, [cell(row) for row in rows]) for header, rank, cell in (*ROUND_COLUMNS, *present)]
    title = f"held-out accuracy per round  ({run})"
    if wide or width is None:
        return _table(title, [(h, v) for h, _, v in columns]), []
    measure = Console(width=10_000, file=open(os.devnull, "w"))
    kept: set[str] = set()
    for header, _, _ in sorted(columns, key=lambda column: column[1]):
        trial = kept | {header}
        if not kept or _width(_table(title, [(h, v) for h, _, v in columns if h in trial]), measure) <= width:
            kept = trial
    shown = [(h, v) for h, _, v in columns if h in kept]
    return _table(title, shown), [h for h, _, _ in columns if h not in kept]


def output_console(wide: bool = False) -> Console:
    """The terminal as it is. Piped to a file or a CI log: $COLUMNS when set, else 200 columns (rich
    would assume 80)."""
    console = Console()
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    return Console(width=max(console.width, 200))


def print_rounds(run: Path, console: Console | None = None, wide: bool = False) -> None:
    """The rounds table, fitted to the console's width; with `wide`, every column, however wide (the
    terminal wraps the lines; `| less -S` scrolls them)."""
    console = console or output_console()
    table, left_out = rounds_table(run, None if wide else console.width, wide)
    width = console.width
    if wide:
        console.width = max(width, _width(table, console))
    try:
        console.print(table)
    finally:
        console.width = width
    if left_out:
        console.print(Text(f"not shown at {console.width} columns: {', '.join(left_out)} "
                           f"({WIDE_HINT} shows every column; so does report.html)", style="dim"))
    console.print(Text(f"run directory: {visible(run)}"))


@dataclass(frozen=True)
class InspectFilter:
    """What `make inspect` shows of a round: one page of pairs, of invalid samples, or of questions
    with no correct sample, optionally only those of one question. `per_page` (inspect.pairs) is the
    page size of pairs; `samples_per_page` (inspect.samples) that of invalid samples and unsolved
    questions, the same as `per_page` when not given."""

    question: str | None = None
    invalid: bool = False
    unsolved: bool = False
    page: int = 1
    per_page: int = 3
    samples_per_page: int | None = None
    wide: bool = False
    wrong_chain: bool = False

    def __post_init__(self) -> None:
        # `make inspect` reads its options without the run's config checks: the same ranges here.
        for key, value in (("inspect.page", self.page), ("inspect.pairs", self.per_page), ("inspect.samples", self.samples_per_page)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{key} must be a whole number of at least 1, got {value!r}")

    @classmethod
    def from_config(cls, inspect: Any) -> "InspectFilter":
        """From the config's `inspect` group (InspectConfig)."""
        return cls(inspect.question, inspect.invalid, inspect.unsolved, inspect.page, inspect.pairs,
                   inspect.get("samples"), bool(inspect.get("wide", False)), bool(inspect.get("wrong_chain", False)))

    def page_size(self, what: str) -> tuple[int, str]:
        if what == "pairs" or self.samples_per_page is None:
            return self.per_page, "inspect.pairs"
        return self.samples_per_page, "inspect.samples"


def inspect_round(run: Path, k: int | None, view: InspectFilter = InspectFilter(), console: Console | None = None) -> None:
    console = console or output_console()
    if k is None:
        k = max((row["round"] for row in read_rounds(run)), default=None)
        if k is None:
            raise SystemExit(f"{run} has no finished round to inspect")
    if k < 0:
        raise ConfigError(f"inspect.round must be >= 0 (or null: the last finished round), got {k}")
    out = round_dir(run, k)
    if not out.exists():
        raise SystemExit(f"{out} does not exist; {_rounds_there(run)}")
    console.print(Text.assemble((visible(out), "bold"), "" if is_done(run, k) else "  (not finished)"))
    overview = view.question is None and not (view.invalid or view.unsolved or view.wrong_chain)
    _show_round(out, view, overview, console)
    if overview:  # the round among the others, last as under loop and round (inspect.wide: every column)
        print_rounds(run, console, wide=view.wide)


def _rounds_there(run: Path) -> str:
    """The rounds a run has, for a message about one it does not have."""
    done = next_round(run) if run.is_dir() else 0
    have = ([f"rounds 0-{done - 1}" if done > 1 else "round 0"] if done else []) + (
        [f"round {done} (not finished)"] if round_dir(run, done).is_dir() else [])
    return f"{run} has {' and '.join(have)}" if have else f"{run} has no round"


def _show_round(out: Path, view: InspectFilter, overview: bool, console: Console) -> None:
    """The round's accuracy and, when it sampled, its stats (in the overview) and the page `view` asks for."""
    metrics_path = out / "metrics.json"
    if metrics_path.exists():
        metrics = read_json(metrics_path)
        console.print(plain(f"held-out accuracy {format_value(metrics.get('eval_accuracy'))}, train loss {format_value(metrics.get('train_loss'))}"))
    if not (out / "generations.jsonl").exists():
        console.print("no generations.jsonl: round 0 is SFT and samples nothing (or the round has not sampled yet)")
        return
    generations = JsonlRecords(out / "generations.jsonl", Generation)
    pairs = JsonlRecords(out / "pairs.jsonl", Pair) if (out / "pairs.jsonl").exists() else []
    if overview:
        console.print(_stats_table(out, generations, pairs))
    if view.wrong_chain:
        _show_wrong_chain(generations, view, console)
    elif view.invalid:
        _show_invalid(generations, view, console)
    elif view.unsolved:
        _show_unsolved(generations, view, console)
    else:
        if view.question is not None:
            _show_question_samples(generations, view.question, console)
        _show_pairs(pairs, view, console)


def _page(items: list[Any], view: InspectFilter, what: str, console: Console) -> list[Any]:
    """The items of page `view.page`, saying where they sit in the whole and how to get the next page."""
    per_page, key = view.page_size(what)
    pages = max(1, -(-len(items) // per_page))
    if not 1 <= view.page <= pages:
        raise SystemExit(f"inspect.page={view.page} is out of range: {len(items)} {what} make {pages} page(s) of {key}={per_page}")
    first = (view.page - 1) * per_page
    shown = items[first : first + per_page]
    where = f"{what} {first + 1}-{first + len(shown)} of {len(items)}" if shown else f"no {what}"
    more = f"; next: inspect.page={view.page + 1}" if view.page < pages else ""
    scope = f" of question {view.question}" if view.question else ""
    console.print(Text.assemble((visible(f"{where}{scope}"), "bold"), f" (page {view.page} of {pages}, {key}={per_page} per page{more})"))
    return shown


def _stats_table(out: Path, generations: Iterable[Generation], pairs: Iterable[Pair]) -> Table:
    stats = read_json(out / "stats.json") if (out / "stats.json").exists() else {}
    table = Table(title="generation stats")
    table.add_column("stat")
    table.add_column("value", justify="right")
    for key, value in stats.items():
        table.add_row(plain(key), plain(format_value(value) if not isinstance(value, dict) else json.dumps(value)))
    chosen, rejected = pair_lengths(generations, pairs)
    for side, lengths in (("chosen", chosen), ("rejected", rejected)):
        if lengths:
            table.add_row(f"{side} tokens (mean / median / max)",
                          f"{statistics.mean(lengths):.1f} / {statistics.median(lengths):.0f} / {max(lengths)}")
    return table


def pair_lengths(generations: Iterable[Generation], pairs: Iterable[Pair]) -> tuple[list[int], list[int]]:
    """Token counts of every pair's chosen and rejected completion, from the samples they came from. A pair
    naming a sample that the generations do not hold (a file edited by hand, or another round's) raises
    a DataError naming the pair's file and line."""
    tokens = {(g.question_id, g.sample_index): g.num_tokens for g in generations}
    chosen, rejected = [], []
    where = pairs.path if isinstance(pairs, JsonlRecords) else Path("pairs")
    for line_number, pair in pairs.numbered() if isinstance(pairs, JsonlRecords) else enumerate(pairs, start=1):
        for side, index, lengths in (("chosen", pair.chosen_sample_index, chosen), ("rejected", pair.rejected_sample_index, rejected)):
            try:
                lengths.append(tokens[(pair.question_id, index)])
            except (KeyError, TypeError):  # TypeError: an index or id edited into a list, which no sample has
                raise row_error(where, line_number, f"{side}_sample_index {index!r} names no sample of question "
                                f"{pair.question_id!r} in the round's generations.jsonl") from None
    return chosen, rejected


def _show_pairs(pairs: Iterable[Pair], view: InspectFilter, console: Console) -> None:
    selected = [p for p in pairs if view.question in (None, p.question_id)]
    for pair in _page(selected, view, "pairs", console):
        table = Table(title=plain(f"{pair.question_id}  (gold answer: {pair.gold_answer or '?'})"), show_lines=True)
        table.add_column(f"chosen (sample {pair.chosen_sample_index})", ratio=1)
        table.add_column(f"rejected (sample {pair.rejected_sample_index})", ratio=1)
        console.print(plain(pair.prompt.strip()))
        table.add_row(plain(pair.chosen), plain(pair.rejected))
        console.print(table)


def _show_question_samples(generations: Iterable[Generation], question: str, console: Console) -> None:
    samples = [g for g in generations if g.question_id == question]
    if not samples:
        raise SystemExit(f"inspect.question={question!r}: no such question in this round's generations.jsonl")
    console.print(plain(samples[0].prompt.strip()))
    table = Table(title=plain(f"{question}: {len(samples)} samples (gold answer: {samples[0].gold})"), show_lines=True)
    for column in ("sample", "answer", "valid", "correct", "tokens", "completion"):
        table.add_column(column, overflow="fold")
    for g in samples:
        completion = plain(g.completion)
        if not g.valid:
            completion.append(f"\ninvalid: {visible(g.invalid_reason)}", style="red")
        table.add_row(str(g.sample_index), plain(quoted(g.answer)), format_value(g.valid), format_value(g.correct), str(g.num_tokens),
                      completion)
    console.print(table)


def _show_invalid(generations: Iterable[Generation], view: InspectFilter, console: Console) -> None:
    invalid = [g for g in generations if not g.valid and view.question in (None, g.question_id)]
    table = Table(title="invalid samples", show_lines=True)
    for column in ("question", "sample", "why", "tokens", "completion"):
        table.add_column(column, overflow="fold")
    for g in _page(invalid, view, "invalid samples", console):
        table.add_row(plain(g.question_id), str(g.sample_index), plain(g.invalid_reason or ""), str(g.num_tokens), plain(g.completion))
    console.print(table)


def _show_wrong_chain(generations: Iterable[Generation], view: InspectFilter, console: Console) -> None:
    """Samples whose answer is right and whose rationale holds a wrong arithmetic step, the wrong steps
    marked (verify.chain=count or check recorded them)."""
    samples = list(generations)
    if not any(g.chain is not None for g in samples):
        raise SystemExit("inspect.wrong_chain=true: this round's samples carry no step checks; "
                         "they are recorded when the round runs with verify.chain=count or verify.chain=check")
    found = [g for g in samples if g.chain and g.chain["answer_correct"] and g.chain["wrong"] and view.question in (None, g.question_id)]
    table = Table(title="right answer, wrong step (marked)", show_lines=True)
    for column in ("question", "sample", "answer", "wrong steps", "rationale"):
        table.add_column(column, overflow="fold")
    for g in _page(found, view, "samples with a wrong step", console):
        rationale = g.rationale or ""
        marked = Text()
        at = 0
        for start, end, *_ in sorted(g.chain["wrong_steps"]):
            if start < at or end > len(rationale):
                continue
            marked.append(plain(rationale[at:start]))
            marked.append(plain(rationale[start:end], style="bold red reverse"))
            at = end
        marked.append(plain(rationale[at:]))
        steps = "\n".join(f"{text} (left side is {left})" for _, _, text, left, _ in g.chain["wrong_steps"])
        table.add_row(plain(g.question_id), str(g.sample_index), plain(quoted(g.answer)), plain(steps), marked)
    console.print(table)


def quoted(answer: Any) -> str:
    """An answer as a JSON string ("1,000"), so that answers containing commas, spaces or quotes are
    told apart from their neighbours; "-" for none."""
    return "-" if answer is None else json.dumps(str(answer), ensure_ascii=False)


def answers_given(answers: Iterable[Any]) -> str:
    """Distinct answers, most frequent first, one a line, each quoted with its count: `"1,000" x3`."""
    counts = Counter(answers)
    return "\n".join(f"{quoted(answer)} x{count}" for answer, count in counts.most_common()) or "-"


def _show_unsolved(generations: Iterable[Generation], view: InspectFilter, console: Console) -> None:
    unsolved = [
        group for group in group_by(generations, "question_id")
        if not any(g.correct for g in group) and view.question in (None, group[0].question_id)
    ]
    table = Table(title="questions with no correct sample", show_lines=True)
    for column in ("question", "gold", "answers given (valid samples), quoted", "invalid"):
        table.add_column(column, overflow="fold")
    for group in _page(unsolved, view, "unsolved questions", console):
        given = answers_given(g.answer for g in group if g.valid)
        question = group[0].prompt.strip()
        table.add_row(plain(f"{group[0].question_id}\n{question}"), plain(quoted(group[0].gold)), plain(given),
                      str(sum(not g.valid for g in group)))
    console.print(table)
