"""A run as one self-contained HTML page: the rounds table, the plots, and a sample of each round's pairs.

Everything the page needs is inside the file (plots as base64 data: URIs, CSS in a <style> element), and
it uses no JavaScript (<details> folds the pairs), so it opens from disk, from a copied file or from a CI
artifact alike. Every piece of text from the run is escaped: completions are model output.
"""

from __future__ import annotations

import base64
from html import escape
from itertools import islice
from pathlib import Path
from typing import Any

from rationale_loop.views import plots
from rationale_loop.run.rundir import ROUND_SUMMARY_KEYS, read_rounds, round_dir, round_label, with_base_row
from rationale_loop.run.records import JsonlRecords, Pair, atomic_writer
from rationale_loop.views.report import format_value, standard_error

COLUMN_TITLES = {
    "eval_accuracy": "accuracy", "eval_questions": "eval questions", "pass_at_n": "pass@n", "train_loss": "train loss",
    "train_items": "train items", "train_steps": "optimizer steps",
    "rank_term_first": "rank term, first step", "rank_term_last": "rank term, last step",
    "pair_margin_before": "margin s_c - s_r before", "pair_margin_after": "margin after",
    "pairs_ranked_right_before": "own pairs ranked right before", "pairs_ranked_right_after": "ranked right after",
    "chosen_score_before": "mean s_c (chosen) before", "chosen_score_after": "mean s_c after",
    "rejected_score_before": "mean s_r (rejected) before", "rejected_score_after": "mean s_r after",
    "steps_checked": "steps checked", "steps_wrong": "steps wrong", "steps_unparsed": "steps unparsed",
    "right_answer_wrong_chain": "right answer, wrong step", "eval_answer_accuracy": "accuracy, answer alone",
    "eval_chain_accuracy": "accuracy, answer and steps",
}

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222; }
table.rounds { border-collapse: collapse; margin: 0 0 1.2rem; max-width: 100%; }
table.rounds caption { text-align: left; font-weight: 600; padding: 0.3rem 0; }
table.rounds th, table.rounds td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; }
table.rounds th { background: #f3f3f3; font-weight: 600; vertical-align: bottom; }
table.rounds td { white-space: nowrap; }
table.rounds td.note { white-space: normal; text-align: left; min-width: 8rem; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; width: 562px; max-width: 100%; }  /* a long caption wraps under its plot, two plots a row */
figure img { max-width: 100%; border: 1px solid #eee; }
details.round-pairs { margin: 0.8rem 0; }
details.round-pairs > summary { cursor: pointer; font-weight: 600; }
.pair { border: 1px solid #ddd; border-radius: 4px; padding: 0.6rem; margin: 0.6rem 0; }
.pair .gold { color: #555; }
.sides { display: grid; grid-template-columns: 1fr 1fr; gap: 0.6rem; }
.sides section { border-radius: 4px; padding: 0.4rem 0.6rem; }
.chosen { background: #eef8ee; }
.rejected { background: #fbeeee; }
pre { white-space: pre-wrap; word-break: break-word; margin: 0.3rem 0; font-size: 0.9rem; }
"""


def write_report(run: Path, out: Path | None = None, pairs_per_round: int = 50) -> Path:
    """Write the report of `run` to `out` (default <run>/report.html), atomically; returns its path."""
    run = Path(run)
    out = Path(out) if out is not None else run / "report.html"
    page = render_report(run, pairs_per_round)
    with atomic_writer(out) as handle:
        handle.write(page)
    return out


def render_report(run: Path, pairs_per_round: int = 50) -> str:
    rows = read_rounds(run)
    if not rows:
        raise SystemExit(f"{run} has no finished round (no rounds.jsonl): nothing to report")
    body = "\n".join([
        f"<h1>Run {escape(run.name)}</h1>",
        f"<p>{escape(str(run.resolve()))}: {len(rows)} finished round(s), round 0 is SFT.</p>",
        "<h2>Rounds</h2>",
        _rounds_table(rows),
        "<h2>Plots</h2>",
        _plots_section(run, rows),
        "<h2>Pairs</h2>",
        _pairs_section(run, rows, pairs_per_round),
    ])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>rationale_loop report: {escape(run.name)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


# The rounds' columns in two tables of a dozen each, so that the page fits a 1400 px window: what each
# round scored, sampled and trained on; then whether its ranking reached the weights. Every key of
# ROUND_SUMMARY_KEYS is in one of them (a key added there and forgotten here goes to the second).
ROUND_TABLES = (
    ("Accuracy, samples and training", (
        "eval_accuracy", "eval_questions", "samples", "valid", "correct", "pass_at_n", "pairs", "train_items", "train_steps", "train_loss")),
    ("Did the round's ranking reach the weights (its own pairs, before -> after its training)", (
        "rank_term_first", "rank_term_last", "pairs_ranked_right_before", "pairs_ranked_right_after",
        "pair_margin_before", "pair_margin_after", "chosen_score_before", "chosen_score_after",
        "rejected_score_before", "rejected_score_after", "note")),
    ("Arithmetic steps of the samples (verify.chain)", (
        "steps_checked", "steps_wrong", "steps_unparsed", "right_answer_wrong_chain", "eval_answer_accuracy",
        "eval_chain_accuracy")),
)


# What a table none of whose rounds recorded a value says instead of a table of dashes.
EMPTY_TABLES = {"Arithmetic steps of the samples (verify.chain)": (
    "Arithmetic steps of the samples: not checked in this run (verify.chain=ignore). verify.chain=count counts "
    "each sample's steps; verify.chain=check also makes a right answer reached by a wrong step incorrect.")}


def _rounds_table(rows: list[dict[str, Any]]) -> str:
    grouped = [key for _, keys in ROUND_TABLES for key in keys]
    tables = [(title, list(keys)) for title, keys in ROUND_TABLES]
    tables[-1][1].extend(key for key in ROUND_SUMMARY_KEYS[1:] if key not in grouped)
    return "\n".join(f'<p class="off">{escape(EMPTY_TABLES[title])}</p>'
                     if title in EMPTY_TABLES and not any(row.get(key) is not None for row in rows for key in keys)
                     else _one_rounds_table(title, keys, rows) for title, keys in tables)


def _one_rounds_table(title: str, keys: list[str], rows: list[dict[str, Any]]) -> str:
    header = "<th>round</th>" + "".join(f'<th class="{escape(key)}">{escape(COLUMN_TITLES.get(key, key))}</th>' for key in keys)
    lines = []
    for row in with_base_row(rows):
        cells = [round_label(row["round"])]
        cells += [_accuracy_cell(row) if key == "eval_accuracy" else format_value(row.get(key)) for key in keys]
        lines.append("<tr>" + "".join(f'<td class="{escape(key)}">{escape(cell)}</td>' for key, cell in zip(["round", *keys], cells)) + "</tr>")
    return (f'<table class="rounds">\n<caption>{escape(title)}</caption>\n<thead><tr>{header}</tr></thead>\n<tbody>\n'
            + "\n".join(lines) + "\n</tbody>\n</table>")


def _accuracy_cell(row: dict[str, Any]) -> str:
    error = standard_error(row.get("eval_accuracy"), row.get("eval_questions"))
    return format_value(row.get("eval_accuracy")) + ("" if error is None else f" ± {error:.3f}")


def _plots_section(run: Path, rows: list[dict[str, Any]]) -> str:
    rounds = [row["round"] for row in rows]
    trained = [k for k in rounds if k > 0]
    figures = [
        ("plot-accuracy", "Held-out accuracy after SFT (round 0) and after every round", plots.accuracy_png(rows)),
        ("plot-pairs", "Number of preference pairs mined in each round", plots.pairs_png(rows)),
        ("plot-rates", "Valid and correct samples as fractions of all samples, per round", plots.rates_png(rows)),
        ("plot-ranking", "Fraction of each round's own pairs the model ranks right (s_c > s_r), before and after the round's training",
         plots.ranking_png(rows)),
        ("plot-loss", "Training loss per optimizer step: SFT and the self-training rounds in separate panels",
         plots.loss_png(plots.train_histories(run, rounds))),
        ("plot-lengths", "Histogram of chosen and rejected response lengths in tokens, all rounds",
         plots.lengths_png(*plots.all_pair_lengths(run, trained))),
    ]
    return '<div class="plots">\n' + "\n".join(_figure(*figure) for figure in figures) + "\n</div>"


def _figure(id_: str, alt: str, png: bytes) -> str:
    source = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (f'<figure><img id="{escape(id_)}" src="{source}" alt="{escape(alt)}">'
            f"<figcaption>{escape(alt)}</figcaption></figure>")


def _pairs_section(run: Path, rows: list[dict[str, Any]], pairs_per_round: int) -> str:
    trained = [row for row in rows if row["round"] > 0]
    if not trained:
        return "<p>No self-training round has finished yet, so there are no pairs.</p>"
    last = trained[-1]["round"]
    return "\n".join(_round_pairs(run, row, pairs_per_round, opened=row["round"] == last) for row in trained)


def _round_pairs(run: Path, row: dict[str, Any], limit: int, opened: bool) -> str:
    """One round's first `limit` pairs in file order (sorted by question): the same sample every time."""
    k = row["round"]
    shown = list(islice(JsonlRecords(round_dir(run, k) / "pairs.jsonl", Pair), limit))
    summary = f"Round {k}: {len(shown)} of {format_value(row.get('pairs'))} pairs"
    articles = "\n".join(_pair(pair, k) for pair in shown)
    return (f'<details class="round-pairs" data-round="{k}"{" open" if opened else ""}>'
            f"<summary>{escape(summary)}</summary>\n{articles}\n</details>")


def _pair(pair: Pair, k: int) -> str:
    gold = f"gold answer: <b>{escape(pair.gold_answer)}</b>"
    if pair.gold_rationale:
        gold += f"; gold rationale: {escape(pair.gold_rationale)}"
    return "\n".join([
        f'<article class="pair" data-round="{k}" data-question-id="{escape(pair.question_id)}">',
        f"<h4>{escape(pair.question_id)}</h4>",
        f'<pre class="question">{escape(pair.prompt.strip())}</pre>',
        f'<p class="gold">{gold}</p>',
        '<div class="sides">',
        _side("chosen", pair.chosen_sample_index, pair.chosen),
        _side("rejected", pair.rejected_sample_index, pair.rejected),
        "</div>",
        "</article>",
    ])


def _side(kind: str, sample_index: int, text: str) -> str:
    return f'<section class="{kind}"><h5>{kind} (sample {sample_index})</h5><pre>{escape(text)}</pre></section>'
