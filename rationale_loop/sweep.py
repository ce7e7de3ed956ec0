"""A sweep checked whole before its first job runs.

Hydra composes and validates each job of a `--multirun` only when that job starts, so a bad combination
(`objective=memphis,star objective.rank_weight=3`: the star job sets a key star never reads) would stop the
sweep after the jobs before it had trained for minutes or hours. `check_sweep` expands the command line into
its jobs the way Hydra's basic sweeper does (the cartesian product of the comma, range and glob sweeps),
composes each job's config with the overrides its run would remember (a fork's source round, a resumed job's
own), and runs every check the config alone allows on each, before anything is created.
"""

from __future__ import annotations

import itertools
from typing import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import DictConfig
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from rationale_loop.config import ConfigError
from rationale_loop.config_checks import validate_choices
from rationale_loop.errors import UserError
from rationale_loop.run_config import merge_overrides, override_key, remembered_overrides
from rationale_loop.rundir import run_dir


def sweep_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """Each job's overrides, in the order Hydra's basic sweeper runs them; Hydra's own keys (hydra.*) are
    left out, as they do not change what a job computes. Empty when a sweep cannot be enumerated without
    Hydra's config loader (glob) or at all (interval, for optimizing sweepers): Hydra then checks each job
    as it starts, as it always does."""
    axes = []
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:  # Hydra says what is wrong with the line itself, once it runs
        return []
    for override in parsed:
        key = override.get_key_element()
        if override_key(key)[1].replace("/", ".").split(".")[0] == "hydra":
            continue
        if not override.is_sweep_override():
            axes.append([override.input_line])
            continue
        try:
            axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        except HydraException:
            return []
    return [list(job) for job in itertools.product(*axes)]


def _remembered(cfg: DictConfig) -> list[str]:
    """The overrides the job's run would start from (run_config.remembered_overrides). A job whose name
    interpolates Hydra's job settings (make sweep's) cannot be placed before Hydra runs it: it is taken
    as a new run, which starts from the round it forks."""
    try:
        run = run_dir(cfg)
    except InterpolationResolutionError:
        run = None
    return remembered_overrides(run, cfg.init_from)


def job_config(job: list[str]) -> tuple[DictConfig, list[str]]:
    """The config a job would run with, and the overrides it would save (its run's remembered ones with
    the job's own laid over them). Needs an initialised Hydra (initialize_config_dir)."""
    cfg = compose(config_name="config", overrides=job)
    saved = _remembered(cfg)
    if not saved:
        return cfg, job
    merged = merge_overrides(saved, job)
    return compose(config_name="config", overrides=merged), merged


def check_sweep(overrides: Sequence[str], config_dir: str) -> int:
    """Refuse the whole sweep if any job's config is wrong, naming the job by the values that vary;
    returns the number of jobs checked."""
    jobs = sweep_jobs(overrides)
    varying = [i for i in range(len(jobs[0])) if len({job[i] for job in jobs}) > 1] if jobs else []
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        for job in jobs:
            try:
                cfg, saved = job_config(job)
                validate_choices(cfg, saved)
            except (UserError, ConfigCompositionException, OmegaConfBaseException) as error:
                name = " ".join(job[i] for i in varying) or " ".join(job)
                raise ConfigError(f"sweep job {name}: {_one_line(error)} (no job was started)") from None
    return len(jobs)


def _one_line(error: Exception) -> str:
    """Hydra's composition errors put the reason in their cause, whose first line says it (the lines
    after it are OmegaConf's object types)."""
    parts = [str(error)] + ([str(error.__cause__)] if error.__cause__ and not isinstance(error, UserError) else [])
    return ": ".join(part.strip().splitlines()[0] for part in parts if part.strip())
