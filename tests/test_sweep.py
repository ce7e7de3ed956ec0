"""A sweep is checked whole before its first job starts (rationale_loop/sweep.py): a bad job later in the
sweep would otherwise stop it after the jobs before it had trained."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rationale_loop.cli import CONFIG_DIR
from rationale_loop.config.errors import ConfigError
from rationale_loop.config.schema import register_configs
from rationale_loop.run.run_config import write_overrides
from rationale_loop.sweep import check_sweep, job_config, sweep_jobs

from conftest import REPO_ROOT


def test_jobs_are_the_product_of_the_sweeps_in_hydras_order_without_hydras_own_keys():
    jobs = sweep_jobs(["objective=memphis,star", "rank.lr=range(1,3)", "seed=3", "hydra.sweep.dir=x",
                       "hydra/job_logging=none", "+data.sources.x={path:a,schema:alpaca}"])
    assert jobs == [[f"objective={o}", f"rank.lr={lr}", "seed=3", "+data.sources.x={path:a,schema:alpaca}"]
                    for o in ("memphis", "star") for lr in (1, 2)]


def test_jobs_are_written_as_hydra_writes_them():
    """Values in Hydra's own spelling (1e-07, which names make sweep's run directories), and a key given
    twice once, the last value winning."""
    assert sweep_jobs(["rank.lr=1e-7,5e-7", "seed=1", "seed=2"]) == [["rank.lr=1e-07", "seed=2"], ["rank.lr=5e-07", "seed=2"]]


def test_sweeps_only_hydra_can_enumerate_are_left_to_it():
    assert sweep_jobs(["objective=glob(m*)"]) == []  # a glob needs Hydra's config loader
    assert sweep_jobs(["rank.lr=interval(0,1)"]) == []  # for optimizing sweepers
    assert sweep_jobs(["not an override"]) == []  # Hydra says what is wrong with the line itself


def test_a_bad_job_anywhere_in_the_sweep_is_refused_by_the_values_that_name_it():
    register_configs()
    assert check_sweep(["objective=memphis,memphis_detached", "rank.lr=1e-7,2e-7", "objective.rank_weight=2"], CONFIG_DIR) == 4
    # The memphis job is fine; the star job names a key star never reads.
    with pytest.raises(ConfigError) as refused:
        check_sweep(["objective=memphis,star", "objective.rank_weight=3"], CONFIG_DIR)
    assert str(refused.value) == ("sweep job objective=star: objective.rank_weight does nothing under objective.name=star, which "
                                  "reads objective.rationalize, objective.sft_replay only; objective.name=memphis reads it "
                                  "(no job was started)")
    with pytest.raises(ConfigError, match=r"^sweep job rank.lr=abc: Error merging override rank.lr=abc: Value 'abc' of type 'str' "
                                          r"could not be converted to Float \(no job was started\)$"):
        check_sweep(["rank.lr=1e-7,abc"], CONFIG_DIR)
    with pytest.raises(ConfigError, match=r"^sweep job sft.lr=-1: sft.lr"):
        check_sweep(["sft.lr=1e-5,-1"], CONFIG_DIR)


def test_a_fork_job_is_checked_with_the_recipe_of_the_round_it_forks(tmp_path):
    """make sweep forks every job from a round; that round's remembered overrides are part of each job's
    config, so a key foreign to the source's objective is refused though the defaults' objective reads it."""
    register_configs()
    source = tmp_path / "runs" / "base" / "round_01"
    source.mkdir(parents=True)
    write_overrides(source, ["objective=star"])
    job_name = 'run="base-r1/${fitting_name:${hydra:job.override_dirname}}"'
    with pytest.raises(ConfigError, match=r"^sweep job objective.rank_weight=1: objective.rank_weight does nothing under objective.name=star"):
        check_sweep([f"init_from={source}", job_name, "objective.rank_weight=1,2"], CONFIG_DIR)
    write_overrides(source, ["objective=memphis"])
    assert check_sweep([f"init_from={source}", job_name, "objective.rank_weight=1,2"], CONFIG_DIR) == 2
    # Each job's run is named from its overrides as Hydra will name it, and that name is checked too.
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg, saved = job_config([f"init_from={source}", job_name, "objective.rank_weight=1"])
    assert cfg.run == "base-r1/objective.rank_weight:1" and saved[0] == "objective=memphis"
    with pytest.raises(ConfigError, match=r"^sweep job objective.rank_weight=1: .*run"):
        check_sweep([f"init_from={source}", 'run="../${hydra:job.override_dirname}"', "objective.rank_weight=1,2"], CONFIG_DIR)


@pytest.mark.parametrize("multirun", ["--multirun", "hydra.mode=MULTIRUN"])
@pytest.mark.slow
def test_the_command_line_refuses_a_bad_sweep_in_one_line_before_creating_anything(tmp_path, multirun):
    done = subprocess.run([sys.executable, "-m", "rationale_loop", "loop", multirun, f"output_root={tmp_path}/runs",
                           f"hydra.sweep.dir={tmp_path}/sweep", "run=s", "objective=memphis,star", "objective.rank_weight=3"],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "rationale_loop: error: sweep job objective=star: objective.rank_weight does nothing under objective.name=star, which "
        "reads objective.rationalize, objective.sft_replay only; objective.name=memphis reads it (no job was started)"]
    assert list(Path(tmp_path).iterdir()) == []


@pytest.mark.slow
def test_a_remembered_key_the_jobs_option_does_not_read_is_dropped_and_a_typed_one_refused(tmp_path):
    """README's sweep after README's loop: the source remembers objective.rank_weight=1, which the star job's
    objective does not read; it is dropped for that job (the user did not type it), kept for the memphis job."""
    register_configs()
    source = tmp_path / "runs" / "w1" / "round_01"
    source.mkdir(parents=True)
    write_overrides(source, ["objective.rank_weight=1", "rounds=2"])
    job_name = 'run="w1-r1/${fitting_name:${hydra:job.override_dirname}}"'
    assert check_sweep([f"init_from={source}", job_name, "rank.lr=1e-7,5e-7", "objective=memphis,star"], CONFIG_DIR) == 4
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        star, star_saved = job_config([f"init_from={source}", job_name, "objective=star"])
        memphis, memphis_saved = job_config([f"init_from={source}", job_name, "objective=memphis"])
        dropped, dropped_saved = job_config([f"init_from={source}", job_name, "objective=memphis"], ["~objective.rank_weight"])
    assert "objective.rank_weight=1" not in star_saved and "objective=star" in star_saved and "rounds=2" in star_saved
    assert "objective.rank_weight=1" in memphis_saved and memphis.objective.rank_weight == 1
    assert "objective.rank_weight=1" not in dropped_saved and dropped.objective.rank_weight == 5  # memphis' own
    # Typed on the command line, the key is still refused; a `~key` of a key the run does not remember is one line.
    with pytest.raises(ConfigError, match=r"^sweep job objective=star: objective.rank_weight does nothing under objective.name=star"):
        check_sweep([f"init_from={source}", job_name, "objective=memphis,star", "objective.rank_weight=2"], CONFIG_DIR)
    with pytest.raises(ConfigError, match=r"^sweep job .*: ~rank.lr drops an override the run remembers, and .* remembers none of rank.lr"):
        check_sweep([f"init_from={source}", job_name, "objective=memphis,star", "~rank.lr"], CONFIG_DIR)
    assert check_sweep([f"init_from={source}", job_name, "objective=memphis,star", "~objective.rank_weight"], CONFIG_DIR) == 2
