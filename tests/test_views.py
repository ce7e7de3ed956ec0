"""What reaches a terminal from a run (issues 24 and 25): data and model text shown inert, tables that
fit the terminal, compare with standard errors, eval sizes, names and damaged fork records, the inspect
options' ranges, and the gradient norm in TensorBoard. Built on small hand-written runs: nothing trains
here but the one tiny model of the TensorBoard test."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from rationale_loop.config.errors import ConfigError
from rationale_loop.views.compare import compare_runs, forks_of
from rationale_loop.views.report import InspectFilter, answers_given, inspect_round, print_rounds
from rationale_loop.views.terminal import visible

HOSTILE = "\x1b]0;pwned\x07\x1b[2J [link=http://x]y[/link] [INST] hi [/INST] \x9b31m \x7f :smile:"
HOSTILE_SHOWN = r"\x1b]0;pwned\x07\x1b[2J [link=http://x]y[/link] [INST] hi [/INST] \x9b31m \x7f :smile:"
SGR = re.compile(r"\x1b\[[0-9;]*m")  # rich's own colours, on a terminal


def _row(k: int, accuracy: float = 0.5, questions: int = 100) -> dict:
    row = {"round": k, "eval_accuracy": accuracy, "eval_questions": questions, "samples": 64, "valid": 60, "correct": 30,
           "pass_at_n": 0.625, "pairs": 12, "train_loss": 1.234, "train_items": 24, "train_steps": 3,
           "rank_term_first": 0.693, "rank_term_last": 0.512, "pair_margin_before": -0.1, "pair_margin_after": 0.2,
           "pairs_ranked_right_before": 0.417, "pairs_ranked_right_after": 0.667, "chosen_score_before": -1.5,
           "chosen_score_after": -1.2, "rejected_score_before": -1.4, "rejected_score_after": -1.6}
    return row if k else {**row, **{key: None for key in row if key not in ("round", "eval_accuracy", "eval_questions", "train_loss")}}


def make_run(path: Path, rounds: int = 2, accuracy: float = 0.5, questions: int = 100, task: str = "tiny_arith", text: str = "") -> Path:
    """A finished run's files as the loop writes them (no checkpoints), round 1 holding `text` in every
    field that comes from data or from the model."""
    for k in range(rounds + 1):
        out = path / f"round_{k:02d}"
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps(_row(k, accuracy, questions)))
        (out / "config.yaml").write_text(f"task:\n  source: {task}\n  eval_size: {questions}\n")
        (out / "DONE").write_text("")
    (path / "rounds.jsonl").write_text("".join(json.dumps(_row(k, accuracy, questions)) + "\n" for k in range(rounds + 1)))
    question = f"q1{text}"
    generations = [
        {"question_id": question, "sample_index": i, "prompt": f"[INST] What is 2+2? {text} [/INST]", "completion": f"It is {i}. {text}",
         "rationale": None, "answer": answer, "gold": f"4{text}", "finish_reason": "stop", "valid": valid, "correct": False,
         "num_tokens": 5 + i, "invalid_reason": None if valid else f"no answer {text}"}
        for i, (answer, valid) in enumerate([("1,000", True), ("1", True), ("000", True), (None, False)])
    ]
    pair = {"question_id": question, "prompt": f"[INST] What is 2+2? {text} [/INST]", "chosen": f"chosen {text}",
            "rejected": f"rejected {text}", "chosen_sample_index": 0, "rejected_sample_index": 1, "gold_answer": f"4{text}"}
    (path / "round_01" / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in generations))
    (path / "round_01" / "pairs.jsonl").write_text(json.dumps(pair) + "\n")
    (path / "round_01" / "stats.json").write_text(json.dumps({"samples": 4, "pass_at_n": 0.0}))
    return path


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "rationale_loop", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, **env})


def _console(width: int = 120, terminal: bool = False) -> Console:
    return Console(record=True, width=width, force_terminal=terminal, color_system="standard" if terminal else None)


# -- data and model text reach the terminal inert ---------------------------------------------------------
def test_visible_writes_out_control_characters_and_keeps_lines():
    assert visible("a\x1b[2Jb\tc\nd\re\x07\x9b\u202e") == "a\\x1b[2Jb\tc\nd\\x0de\\x07\\x9b\\u202e"
    assert visible("[/INST] ⟦ok⟧") == "[/INST] ⟦ok⟧"


@pytest.mark.parametrize("view", [{}, {"question": "q1" + HOSTILE}, {"invalid": True}, {"unsolved": True}])
def test_inspect_shows_hostile_text_literally_and_sends_no_escape_sequence(tmp_path, view):
    run = make_run(tmp_path / "hostile", text=HOSTILE)
    for terminal in (False, True):
        console = _console(200, terminal)
        inspect_round(run, 1, InspectFilter(**view, per_page=10), console=console)
        out = console.export_text(styles=terminal)
        assert "\x1b" not in SGR.sub("", out) and "\x07" not in out and "\x9b" not in out
        if not terminal:
            assert all(piece in out for piece in HOSTILE_SHOWN.split()), out  # cells may wrap between them


def test_inspect_command_on_llama_2_text_prints_it_literally(tmp_path):
    run = make_run(tmp_path / "runs" / "llama", text=HOSTILE)
    done = _cli("inspect", f"output_root={run.parent}", "run=llama", "inspect.round=1", COLUMNS="300")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert "[INST] What is 2+2?" in done.stdout and "[/INST]" in done.stdout
    assert r"\x1b]0;pwned\x07\x1b[2J [link=http://x]y[/link]" in done.stdout


def test_unsolved_answers_are_quoted_one_a_line():
    assert answers_given(["1,000", "1", "000", "1"]) == '"1" x2\n"1,000" x1\n"000" x1'
    assert answers_given([]) == "-"


def test_data_preview_writes_out_control_characters(tmp_path):
    from rationale_loop.data.preview import preview

    text = preview(tmp_path, ("Q: \x1b]0;pwned\x07 [/INST]", "A \x1b[2J"), 1)
    assert "\x1b" not in text and "\x07" not in text and r"\x1b]0;pwned\x07 [/INST]" in text


def test_a_text_table_right_aligns_number_columns_and_never_reads_a_cell_as_markup():
    from rationale_loop.views.terminal import text_table

    text = text_table(["source", "rows"], [["[bold]x[/bold] [/INST]", 7], ["b\x1b[2J", 1234]])
    lines = text.splitlines()
    assert lines[0].split() == ["source", "rows"] and set(lines[1]) == {"─"}
    assert "[bold]x[/bold] [/INST]" in lines[2] and r"b\x1b[2J" in lines[3] and "\x1b" not in text
    assert lines[2].endswith("   7") and lines[3].endswith("1234"), "numbers right-aligned"


# -- the inspect and report options' ranges -----------------------------------------------------------------
@pytest.mark.parametrize("override", ["inspect.pairs=0", "inspect.pairs=-2", "inspect.page=0", "inspect.samples=0"])
def test_inspect_page_sizes_below_one_are_one_line_errors_naming_the_key(tmp_path, override):
    run = make_run(tmp_path / "runs" / "r")
    done = _cli("inspect", f"output_root={run.parent}", "run=r", override)
    key = override.split("=")[0]
    if key == "inspect.samples":  # not passed by the command yet (see InspectFilter.from_config): the config check
        from test_config import compose_config
        from rationale_loop.preflight.config_checks import validate

        with pytest.raises(ConfigError, match=r"^inspect\.samples must be at least 1"):
            validate(compose_config(override))
        return
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and key in done.stderr, done.stderr
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        InspectFilter.from_config(__import__("omegaconf").OmegaConf.create(
            {"question": None, "invalid": False, "unsolved": False, "page": 1, "pairs": 3, "samples": 10, key.split(".")[1]: 0}))


def test_samples_have_their_own_page_size(tmp_path):
    run = make_run(tmp_path / "r")
    console = _console()
    inspect_round(run, 1, InspectFilter(invalid=True, per_page=1, samples_per_page=5), console=console)
    assert "inspect.samples=5 per page" in console.export_text()


# -- tables that fit the terminal ------------------------------------------------------------------------
@pytest.mark.parametrize("width", [80, 120])
def test_rounds_table_keeps_whole_headers_at_the_terminals_width(tmp_path, width):
    run = make_run(tmp_path / "r")
    console = _console(width)
    print_rounds(run, console)
    out = console.export_text()
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= width
    for header in ("round", "accuracy ± SE", "pairs", "own pairs ranked right"):
        assert header in out
    assert "0.500 ± 0.050" in out and "inspect.wide=true" in out


def test_rounds_table_wide_shows_every_column(tmp_path):
    from rationale_loop.views.report import ROUND_COLUMNS

    run = make_run(tmp_path / "r")
    console = _console(80)
    print_rounds(run, console, wide=True)
    out = console.export_text()
    assert "…" not in out and all(header in out for header, _, _ in ROUND_COLUMNS) and "not shown" not in out


# -- compare ---------------------------------------------------------------------------------------------------
def test_compare_by_name_with_standard_errors_eval_sizes_and_a_warning_on_other_eval_sets(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "a", accuracy=0.5, questions=100)
    make_run(root / "b", accuracy=0.6, questions=100)
    make_run(root / "small", accuracy=0.7, questions=10)
    done = _cli("compare", "a", "b", "--root", str(root), COLUMNS="200")
    assert done.returncode == 0, done.stderr
    assert "0.500 ± 0.050" in done.stdout and "0.600 ± 0.049" in done.stdout and "eval n" in done.stdout
    assert "warning" not in done.stdout
    mixed = _cli("compare", "a", str(root / "small"), "--root", str(root), COLUMNS="200")
    assert mixed.returncode == 0, mixed.stderr
    assert "other eval set" in mixed.stdout and "warning: not every run was scored on the same eval set" in mixed.stdout
    assert "10 questions" in mixed.stdout and "0.700 ± 0.145" in mixed.stdout
    missing = _cli("compare", "nope", "--root", str(root))
    assert missing.returncode != 0 and "no such run directory: nope" in missing.stderr


def test_compare_warns_about_another_task(tmp_path):
    make_run(tmp_path / "a")
    make_run(tmp_path / "g", task="openai/gsm8k")
    console = _console(200)
    compare_runs([tmp_path / "a", tmp_path / "g"], console)
    out = console.export_text()
    assert "other eval set than a" in out and "openai/gsm8k" in out


def test_one_damaged_fork_record_is_skipped_with_a_warning(tmp_path, capsys):
    root = tmp_path / "runs"
    base = make_run(root / "base")
    for name in ("f1", "f2"):
        make_run(root / "sweep" / name)
        (root / "sweep" / name / "fork.json").write_text(json.dumps({"from": str((base / "round_01").resolve()), "round": 1}))
    make_run(root / "broken")
    (root / "broken" / "fork.json").write_text('{"from": ')
    make_run(root / "odd")
    (root / "odd" / "fork.json").write_text("[1, 2]")
    assert forks_of(base, root) == [root / "sweep" / "f1", root / "sweep" / "f2"]
    warned = capsys.readouterr().err
    assert str(root / "broken" / "fork.json") in warned and str(root / "odd" / "fork.json") in warned
    done = _cli("compare", "--forks-of", "base", "--root", str(root), COLUMNS="200")
    assert done.returncode == 0, done.stderr
    assert "sweep/f1" in done.stdout and "sweep/f2" in done.stdout and "broken/fork.json" in done.stderr


# -- the gradient norm in TensorBoard ---------------------------------------------------------------------
def test_training_logs_the_gradient_norm_before_clipping(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rationale_loop.config.schema import TrainConfig
    from rationale_loop.models.model import train_tokenizer
    from rationale_loop.training.objectives import SupervisedObjective
    from rationale_loop.training.train import train
    from test_train import ITEMS, tiny_model

    tokenizer = train_tokenizer([i.prompt + i.response for i in ITEMS] * 5, vocab_size=290)
    cfg = TrainConfig(lr=1e-2, batch_size=2, micro_batch_size=2, warmup_ratio=0.0, max_length=256, grad_clip=1e-3)
    result = train(tiny_model(tokenizer), tokenizer, ITEMS, SupervisedObjective(), cfg, seed=0, desc="test", log_dir=tmp_path / "tb")
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    norms = events.Scalars("train/grad_norm")
    assert [e.step for e in norms] == list(range(1, result.steps + 1))
    assert all(e.value > cfg.grad_clip for e in norms), "the norm before clipping, not the clipped one"


# -- plots: legends beside the data, not on it --------------------------------------------------------------
def test_plot_legends_cover_no_axes(tmp_path):
    from rationale_loop.views import plots
    rows = [_row(k) for k in range(3)]
    histories = {k: [{"step": s, "loss": 1.0 / s} for s in range(1, 5)] for k in range(3)}
    figures = [plots.rates_figure(rows), plots.ranking_figure(rows), plots.loss_figure(histories),
               plots.lengths_figure([3, 4, 5, 5], [6, 7, 7, 9])]
    for figure in figures:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        renderer = FigureCanvasAgg(figure).get_renderer()
        figure.draw(renderer)  # constrained layout places the legends
        legends = [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend() is not None)]
        assert legends, figure
        for legend in legends:
            box = legend.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= figure.bbox.x1 + 1, "inside the image"
            for ax in figure.axes:
                assert not box.overlaps(ax.get_window_extent(renderer)), (figure.texts, ax.get_title())
