"""The plots of a run's report, each returned as PNG bytes.

Figures are built on matplotlib's object API (`Figure`), never through pyplot: pyplot keeps every figure
in a global registry and picks a GUI backend from the environment, neither of which a report written
from a headless job wants. `Figure.savefig` renders with Agg for PNG output.

Round 0 is SFT; rounds 1 and later have samples and pairs. Every plot takes the rows of rounds.jsonl
(or data read from the round directories) and copes with a run that has only round 0.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rationale_loop.views import report
from rationale_loop.run.rundir import round_dir
from rationale_loop.run.records import Generation, JsonlRecords, Pair, read_json

FIGSIZE = (5.6, 3.4)  # two side by side on the report page
DPI = 100
# A little above 1, so that a point at 1.0 (every sample valid) is not cut in half by the frame.
FRACTION_TOP = 1.05
NO_ROUNDS_YET = "no self-training round finished yet (round 0 is SFT)"
NO_PAIRS = "no finished round mined a pair to rank"


# -- data read from the run directory ------------------------------------------------------------------
def train_histories(run: Path, rounds: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """Round -> its per-optimizer-step history from metrics.json (empty when the file has none)."""
    histories = {}
    for k in rounds:
        metrics = read_json(round_dir(run, k) / "metrics.json")  # a damaged file: one DataError naming it and the line
        histories[k] = metrics.get("train_history") or []
    return histories


def pair_lengths(run: Path, k: int) -> tuple[list[int], list[int]]:
    """(chosen, rejected) lengths in tokens of round k's pairs, both files streamed from disk."""
    out = round_dir(run, k)
    return report.pair_lengths(JsonlRecords(out / "generations.jsonl", Generation), JsonlRecords(out / "pairs.jsonl", Pair))


def all_pair_lengths(run: Path, rounds: Iterable[int]) -> tuple[list[int], list[int]]:
    """Chosen and rejected lengths pooled over the given self-training rounds."""
    chosen, rejected = [], []
    for k in rounds:
        round_chosen, round_rejected = pair_lengths(run, k)
        chosen.extend(round_chosen)
        rejected.extend(round_rejected)
    return chosen, rejected


# -- the plots -----------------------------------------------------------------------------------------
def accuracy_figure(rows: list[dict[str, Any]]) -> Figure:
    """With error bars of one binomial standard error, sqrt(p(1-p)/n): on a small eval set a change
    of a point or two between rounds is often inside them, and the plot should say so."""
    figure, ax = _figure("Held-out accuracy per round (±1 standard error)")
    scored = [row for row in rows if row.get("eval_accuracy") is not None]
    if scored:
        accuracy = [row["eval_accuracy"] for row in scored]
        errors = [
            (p * (1 - p) / row["eval_questions"]) ** 0.5 if row.get("eval_questions") else 0.0
            for p, row in zip(accuracy, scored)
        ]
        ax.errorbar([row["round"] for row in scored], accuracy, yerr=errors, marker="o", capsize=4)
    _round_axis(ax, [row["round"] for row in rows])
    ax.set_ylabel("accuracy (greedy, held-out)")
    return figure


def pairs_figure(rows: list[dict[str, Any]]) -> Figure:
    figure, ax = _figure("Preference pairs mined per round")
    trained = _self_training_rows(rows)
    if trained:
        ax.bar([row["round"] for row in trained], [row.get("pairs") or 0 for row in trained])
    else:
        _note(ax, NO_ROUNDS_YET)
    _round_axis(ax, [row["round"] for row in rows])
    ax.set_ylabel("pairs")
    return figure


def _fraction_axis(ax: Any, rows: list[dict[str, Any]], label: str) -> None:
    """Every round on x (SFT included, so the rounds' panels line up), a fraction from 0 on y."""
    _round_axis(ax, [row["round"] for row in rows])
    ax.set_ylabel(label)
    ax.set_ylim(0, FRACTION_TOP)


def rates_figure(rows: list[dict[str, Any]]) -> Figure:
    figure, ax = _figure("Valid and correct samples per round")
    trained = [row for row in _self_training_rows(rows) if row.get("samples")]
    if trained:
        rounds = [row["round"] for row in trained]
        for key in ("valid", "correct"):
            ax.plot(rounds, [(row.get(key) or 0) / row["samples"] for row in trained], marker="o", label=f"{key} / samples")
        _legend_outside(ax)
    else:
        _note(ax, NO_ROUNDS_YET)
    _fraction_axis(ax, rows, "fraction of samples")
    return figure


def ranking_figure(rows: list[dict[str, Any]]) -> Figure:
    """Whether a round's training reached the weights: the fraction of the round's own pairs the model
    ranks right (s_c > s_r) with the weights it started from and with the weights it saved."""
    figure, ax = _figure("Own pairs ranked right, before and after each round")
    measured = [row for row in _self_training_rows(rows) if row.get("pairs_ranked_right_before") is not None]
    if measured:
        rounds = [row["round"] for row in measured]
        width = 0.38
        ax.bar([k - width / 2 for k in rounds], [row["pairs_ranked_right_before"] for row in measured], width, label="before training")
        ax.bar([k + width / 2 for k in rounds], [row["pairs_ranked_right_after"] for row in measured], width, label="after training")
        ax.axhline(0.5, color="gray", linestyle=":", linewidth=1)
        _legend_outside(ax)
    else:
        _note(ax, NO_PAIRS if _self_training_rows(rows) else NO_ROUNDS_YET)
    _fraction_axis(ax, rows, "fraction of pairs with s_c > s_r")
    return figure


def loss_figure(histories: dict[int, list[dict[str, Any]]]) -> Figure:
    """SFT and the rounds in separate panels: their losses are different objectives on different
    scales (cross-entropy vs anchor + weighted ranking loss), and one axis would flatten the rounds."""
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    figure.suptitle("Training loss per optimizer step")
    panels = [("SFT (round 0)", {k: h for k, h in histories.items() if k == 0}),
              ("self-training rounds", {k: h for k, h in histories.items() if k > 0})]
    panels = [(title, part) for title, part in panels if part] or [("", {})]
    for index, (title, part) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), index + 1)
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
        drawn = False
        for k, history in sorted(part.items()):
            steps = [entry for entry in history if entry.get("loss") is not None]
            if steps:
                # A marker on every point: a round of a small run can be a single step, an invisible line.
                ax.plot([entry["step"] for entry in steps], [entry["loss"] for entry in steps],
                        marker=".", markersize=4, label=_round_label(k), color=f"C{k % 10}")  # one legend: a colour per round
                drawn = True
        if not drawn:
            _note(ax, "no training history recorded")
        ax.set_xlabel("optimizer step")
        if index == 0:
            ax.set_ylabel("training loss")
    handles = [(h, label) for ax in figure.axes for h, label in zip(*ax.get_legend_handles_labels())]
    if handles:
        # One legend for both panels, beside them: inside, it would cover the first steps' losses.
        figure.legend(*zip(*handles), loc="outside right upper", fontsize="small", frameon=False)
    return figure


def lengths_figure(chosen: list[int], rejected: list[int]) -> Figure:
    figure, ax = _figure("Lengths of chosen and rejected responses (all rounds)")
    if chosen or rejected:
        ax.hist([chosen, rejected], bins=_integer_bins(chosen + rejected), label=[f"chosen ({len(chosen)})", f"rejected ({len(rejected)})"])
        _legend_outside(ax)
    else:
        _note(ax, "no pairs mined yet")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("pairs")
    return figure


# PNG bytes of each, as the report embeds them.
def accuracy_png(rows: list[dict[str, Any]]) -> bytes:
    return _png(accuracy_figure(rows))


def pairs_png(rows: list[dict[str, Any]]) -> bytes:
    return _png(pairs_figure(rows))


def rates_png(rows: list[dict[str, Any]]) -> bytes:
    return _png(rates_figure(rows))


def ranking_png(rows: list[dict[str, Any]]) -> bytes:
    return _png(ranking_figure(rows))


def loss_png(histories: dict[int, list[dict[str, Any]]]) -> bytes:
    return _png(loss_figure(histories))


def lengths_png(chosen: list[int], rejected: list[int]) -> bytes:
    return _png(lengths_figure(chosen, rejected))


# -- helpers -------------------------------------------------------------------------------------------
def _self_training_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if row["round"] > 0]


def _integer_bins(values: list[int], most: int = 30) -> list[int]:
    """Bin edges on whole tokens, at most `most` bins, the last edge past the largest value: matplotlib's
    automatic bins would split single token counts across bins."""
    low, high = min(values), max(values)
    width = max(1, -(-(high - low + 1) // most))
    return list(range(low, high + width + 1, width))


def _round_label(k: int) -> str:
    return "round 0 (SFT)" if k == 0 else f"round {k}"


def _figure(title: str) -> tuple[Figure, Axes]:
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = figure.add_subplot()
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return figure, ax


def _round_axis(ax: Axes, rounds: list[int]) -> None:
    """Integer ticks, one per round, with round 0 named SFT."""
    ax.set_xticks(rounds, ["0\n(SFT)" if k == 0 else str(k) for k in rounds])
    if rounds:
        ax.set_xlim(min(rounds) - 0.5, max(rounds) + 0.5)
    ax.set_xlabel("round")


def _legend_outside(ax: Axes) -> None:
    """The legend right of the axes, outside them (constrained layout makes room): inside, it covered
    points or bars in some runs."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small", frameon=False)


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
