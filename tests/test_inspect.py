"""make inspect: a round's stats with chosen/rejected lengths, pairs by page, and the filters (one
question, invalid samples, questions with no correct sample), checked against the round's files."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from rich.console import Console

from rationale_loop.run.records import Generation, Pair, read_jsonl
from rationale_loop.views.report import InspectFilter, inspect_round, pair_lengths


def _shown(run: Path, k: int | None, **view) -> str:
    console = Console(record=True, width=200, force_terminal=False)
    inspect_round(run, k, InspectFilter(**view), console=console)
    return console.export_text()


def _round(run: Path, k: int = 1) -> tuple[list[Generation], list[Pair]]:
    out = run / f"round_{k:02d}"
    return [Generation(**r) for r in read_jsonl(out / "generations.jsonl")], [Pair(**r) for r in read_jsonl(out / "pairs.jsonl")]


def test_stats_include_pass_at_n_and_lengths_of_chosen_and_rejected(two_round_run):
    generations, pairs = _round(two_round_run)
    text = _shown(two_round_run, 1)
    stats = json.loads((two_round_run / "round_01" / "stats.json").read_text())
    assert "pass_at_n" in text and f"{stats['pass_at_n']:.3f}" in text
    chosen, rejected = pair_lengths(generations, pairs)
    assert len(chosen) == len(rejected) == len(pairs) > 0
    tokens = {(g.question_id, g.sample_index): g.num_tokens for g in generations}
    assert chosen[0] == tokens[(pairs[0].question_id, pairs[0].chosen_sample_index)]
    assert f"{max(chosen)}" in text.split("chosen tokens (mean / median / max)")[1].splitlines()[0]
    assert "rejected tokens (mean / median / max)" in text


def test_default_is_the_last_finished_round(two_round_run):
    assert "round_02" in _shown(two_round_run, None).splitlines()[0]


def test_pairs_are_paged(two_round_run):
    _, pairs = _round(two_round_run)
    assert len(pairs) >= 3, "the small run must mine a few pairs"
    second = _shown(two_round_run, 1, page=2, per_page=1)
    assert f"pairs 2-2 of {len(pairs)}" in second and "next: inspect.page=3" in second
    assert pairs[1].chosen.splitlines()[0] in second
    with pytest.raises(SystemExit, match="out of range"):
        _shown(two_round_run, 1, page=len(pairs) + 1, per_page=1)


def test_question_filter_shows_its_samples_and_only_its_pairs(two_round_run):
    generations, pairs = _round(two_round_run)
    question = pairs[0].question_id
    text = _shown(two_round_run, 1, question=question, per_page=50)
    mine = [p for p in pairs if p.question_id == question]
    assert f"pairs 1-{len(mine)} of {len(mine)} of question {question}" in text
    assert f"{question}: 8 samples" in text
    with pytest.raises(SystemExit, match="no such question"):
        _shown(two_round_run, 1, question="no/such/id")


def test_invalid_and_unsolved_filters_match_the_generations(two_round_run):
    generations, _ = _round(two_round_run)
    invalid = [g for g in generations if not g.valid]
    text = _shown(two_round_run, 1, invalid=True, per_page=1000)
    assert (f"invalid samples 1-{len(invalid)} of {len(invalid)}" if invalid else "no invalid samples") in text
    by_question = defaultdict(list)
    for g in generations:
        by_question[g.question_id].append(g)
    unsolved = sorted(q for q, group in by_question.items() if not any(g.correct for g in group))
    text = _shown(two_round_run, 1, unsolved=True, per_page=1000)
    assert (f"unsolved questions 1-{len(unsolved)} of {len(unsolved)}" if unsolved else "no unsolved questions") in text
    assert all(q in text for q in unsolved)
    solved = sorted(set(by_question) - set(unsolved))
    assert not any(q in text for q in solved)


def test_round_zero_has_no_samples_to_show(two_round_run):
    assert "round 0 is SFT" in _shown(two_round_run, 0)


def test_make_inspect_ends_with_the_rounds_table_and_wide_shows_every_column(two_round_run):
    """The rounds table's footer sends users to inspect.wide=true: under `inspect` it shows every column.
    A round the run does not have is one line that lists the ones it has."""
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from rationale_loop.views.report import OPTIONAL_COLUMNS, ROUND_COLUMNS
    from rationale_loop.run.rundir import read_rounds

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rationale_loop", "inspect", "run=two", f"output_root={two_round_run.parent}",
                               *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "80"})

    def inspect(*args: str) -> str:
        done = run(*args)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    rows = read_rounds(two_round_run)
    headers = [c[0] for c in ROUND_COLUMNS] + [c[0] for c in OPTIONAL_COLUMNS if any(r.get(c[3]) is not None for r in rows)]
    narrow = inspect()
    assert "held-out accuracy per round" in narrow and "not shown at 80 columns" in narrow and "inspect.wide=true" in narrow
    wide = inspect("inspect.wide=true")
    assert "held-out accuracy per round" in wide and "not shown at" not in wide
    assert all(header in wide for header in headers), [h for h in headers if h not in wide]
    # A filtered view is about the round alone.
    assert "held-out accuracy per round" not in inspect("inspect.invalid=true")
    missing = run("inspect.round=9")
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        f"{two_round_run / 'round_09'} does not exist; {two_round_run} has rounds 0-2"]
