"""Forks and sweeps: init_from starts a run from another run's round; a Hydra multirun forks every job
from the same round into its own run directory; compare prints them side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rationale_loop.config.errors import ConfigError
from rationale_loop.run.rundir import fork, parse_round_path

from conftest import REPO_ROOT


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rationale_loop", *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def sweep(two_round_run: Path) -> dict:
    """`make sweep RUN=two ROUND=1 ARGS="rank.lr=1e-4,3e-4"`, through make as a user types it: every
    job starts from round 1's recipe (the small config, remembered by the run) with its own rank.lr."""
    base = two_round_run
    stamp = (base / "round_02" / "DONE").stat().st_mtime_ns
    runs = base.parent
    done = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", f"BIN={Path(sys.executable).parent}",
                           "sweep", "RUN=two", "ROUND=1", f"OUTPUT_ROOT={runs}", "ARGS=rank.lr=1e-4,3e-4"],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    # Each job's run is named by what the sweep varies (Hydra's override_dirname), in the sweep's folder.
    jobs = [runs / "two-r1" / f"rank.lr:{lr}" for lr in ("0.0001", "0.0003")]
    assert all(job.is_dir() for job in jobs), sorted(p.name for p in (runs / "two-r1").iterdir())
    return {"base": base, "jobs": jobs, "base_stamp": stamp, "sweep_dir": runs / "two-r1"}


@pytest.mark.slow
def test_every_sweep_job_forks_from_the_same_round_into_its_own_run(sweep):
    base, jobs = sweep["base"], sweep["jobs"]
    for job in jobs:
        assert json.loads((job / "fork.json").read_text()) == {"from": str((base / "round_01").resolve()), "round": 1}
        for k in (0, 1):
            assert (job / f"round_{k:02d}").is_symlink() and (job / f"round_{k:02d}").resolve() == (base / f"round_{k:02d}").resolve()
        own = job / "round_02"
        assert not own.is_symlink() and (own / "DONE").exists()
        rows = [json.loads(line) for line in (job / "rounds.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [0, 1, 2]
    # Same starting checkpoint and seed: the same samples; different learning rates: different weights.
    first, second = (job / "round_02" for job in jobs)
    assert (first / "generations.jsonl").read_bytes() == (second / "generations.jsonl").read_bytes()
    assert (first / "checkpoint/model.safetensors").read_bytes() != (second / "checkpoint/model.safetensors").read_bytes()
    assert OmegaConf.load(first / "config.yaml").rank.lr == 1e-4 and OmegaConf.load(second / "config.yaml").rank.lr == 3e-4
    assert (base / "round_02" / "DONE").stat().st_mtime_ns == sweep["base_stamp"], "the base run must not be touched"
    # Hydra's record of the sweep lies in the sweep's folder; nothing is written anywhere else.
    assert (sweep["sweep_dir"] / "multirun.yaml").is_file() and not (REPO_ROOT / "outputs" / "sweeps").exists()


@pytest.mark.slow
def test_a_fork_starts_from_its_source_config_and_goes_on_without_retyping_it(sweep):
    base, job = sweep["base"], sweep["jobs"][0]
    source, own = OmegaConf.load(base / "round_01" / "config.yaml"), OmegaConf.load(job / "round_02" / "config.yaml")
    # The small config of the source run (not the defaults), with the sweep's value laid over it.
    assert own.model.hidden_size == source.model.hidden_size == 64 and own.task.eval_size == source.task.eval_size == 32
    assert own.objective.name == "memphis" and own.rank.lr == 1e-4
    again = _cli("round", f"output_root={job.parent.parent}", f"run=two-r1/{job.name}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "are done; rounds=3 runs round 3" in again.stdout and "rank.lr=0.0001" in again.stdout


def test_a_sweep_job_name_too_long_for_a_file_name_is_cut_at_an_override_and_told_apart_by_a_hash():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from rationale_loop.config.paths import NAME_BYTES, fitting_name

    names = ["+".join(f"model.key_{i}:{i * j}" for i in range(40)) for j in (1, 2)]
    assert all(len(name.encode()) > 255 for name in names)
    cut = [fitting_name(name) for name in names]
    assert len(set(cut)) == 2 and all(len(c.encode()) <= NAME_BYTES for c in cut)
    assert all(names[j].startswith(cut[j].rsplit("+sha1:", 1)[0] + "+") and "+sha1:" in cut[j] for j in (0, 1)), "cut at a '+'"
    assert fitting_name("rank.lr:1e-07+objective:star") == "rank.lr:1e-07+objective:star"
    # what `make round RUN=...` gets back: a value Hydra's command line takes unquoted
    OverridesParser.create().parse_overrides([f"run=w1-r1/{cut[0]}"])


def test_compare_prints_the_base_and_its_forks_side_by_side(sweep):
    base = sweep["base"]
    shown = _cli("compare", "--forks-of", str(base), "--root", str(base.parent))
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    for title in ("held-out accuracy", "pairs mined", "mean training loss"):
        assert title in out
    assert "rank.lr:0.0001" in out and "rank.lr:0.0003" in out
    accuracy = json.loads((sweep["jobs"][1] / "round_02" / "metrics.json").read_text())["eval_accuracy"]
    assert f"{accuracy:.3f}" in out
    missing = _cli("compare", str(base.parent / "nope"))
    assert missing.returncode != 0 and "no such run directory" in missing.stderr


def test_init_from_is_refused_for_an_unfinished_round_or_a_run_with_rounds_of_its_own(two_round_run, tmp_path):
    with pytest.raises(ConfigError, match="not a finished round"):
        fork(tmp_path / "new", two_round_run / "round_05")
    with pytest.raises(ConfigError, match="must name a round directory"):
        parse_round_path(two_round_run)
    with pytest.raises(ConfigError, match="rounds of its own"):
        fork(two_round_run, two_round_run / "round_01")
    assert parse_round_path(two_round_run / "round_1" / "checkpoint") == (two_round_run, 1)


def test_a_fork_interrupted_while_linking_is_completed_and_its_links_are_relative(two_round_run, tmp_path):
    import os

    run = tmp_path / "outputs" / "fork"
    fork(run, two_round_run / "round_01")
    (run / "round_01").unlink()
    (run / "rounds.jsonl").unlink()
    fork(run, two_round_run / "round_01")  # the same init_from again: completes the fork
    assert (run / "round_01" / "DONE").exists() and (run / "rounds.jsonl").exists()
    assert not os.path.isabs(os.readlink(run / "round_00"))


def test_compare_names_runs_with_no_common_directory_in_full():
    from rationale_loop.views.compare import _common_prefix

    assert _common_prefix(["baseline", "fork_lr"]) == ""
    assert _common_prefix(["outputs/runs/a", "outputs/runs/b/c"]) == "outputs/runs/"
    assert _common_prefix(["outputs/runs/a", "/elsewhere/runs/b"]) == "", "a run below the working directory and one out of it"
