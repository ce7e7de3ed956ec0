"""A sweep checked whole before its first job runs.

Hydra composes and validates each job of a `--multirun` only when that job starts, so a bad combination
(`objective=memphis,star objective.rank_weight=3`: the star job sets a key star never reads) would stop the
sweep after the jobs before it had trained for minutes or hours. `check_sweep` expands the command line into
its jobs with Hydra's basic sweeper's own split (the cartesian product of the comma and range sweeps),
composes each job's config as Hydra will (its run's name resolved from the job's overrides), lays over it
the overrides its run would remember (a fork's source round, a resumed job's own), and runs every check the
config alone allows on each, before anything is created.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from rationale_loop.config import ConfigError
from rationale_loop.config_checks import validate
from rationale_loop.errors import UserError
from rationale_loop.paths import check_output_root, check_run_name
from rationale_loop.run_config import merge_overrides, override_key, remembered_overrides, with_run_named
from rationale_loop.rundir import run_dir


def sweep_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """Each job's overrides, as Hydra's basic sweeper writes them and in the order it runs them; Hydra's
    own keys (hydra.*) are left out, as they do not change what a job computes. Empty when the sweep
    cannot be enumerated without Hydra's config loader (glob) or at all (interval, for optimizing
    sweepers), or when a line does not parse: Hydra then says so, or checks each job as it starts."""
    try:
        parsed = [o for o in OverridesParser.create().parse_overrides(list(overrides))
                  if override_key(o.get_key_element())[1].replace("/", ".").split(".")[0] != "hydra"]
        return BasicSweeper.split_arguments(parsed, None)[0]
    except HydraException:
        return []


@contextmanager
def _hydra_job_settings(cfg: DictConfig) -> Iterator[None]:
    """While the block runs, `${hydra:...}` reads the job's settings (override_dirname, in make sweep's run
    names), as it does inside Hydra's own run of the job; cleared after, for that run to set its own."""
    HydraConfig.instance().set_config(cfg)
    try:
        yield
    finally:
        HydraConfig.instance().cfg = None  # type: ignore[assignment]


def _run_name(job: list[str]) -> str:
    """The job's run name as Hydra will resolve it (make sweep's interpolates the job's override_dirname)."""
    with_hydra = compose(config_name="config", overrides=job, return_hydra_config=True)
    with _hydra_job_settings(with_hydra):
        return str(with_hydra.run)


def job_config(job: list[str]) -> tuple[DictConfig, list[str]]:
    """The config a job would run with, and the overrides it would save: its run's remembered ones with
    the job's own laid over them (cli.with_run_config does the same inside the job). Needs an
    initialised Hydra (initialize_config_dir)."""
    name = _run_name(job)

    cfg = compose(config_name="config", overrides=with_run_named(job, name))
    check_output_root(cfg.output_root)  # before the run's directory is looked into, as inside the job
    check_run_name(cfg.run)
    saved = remembered_overrides(run_dir(cfg), cfg.init_from)
    if not saved:
        return cfg, job
    merged = merge_overrides(saved, job)
    return compose(config_name="config", overrides=with_run_named(merged, name)), merged


def check_sweep(overrides: Sequence[str], config_dir: str) -> int:
    """Refuse the whole sweep if any job's config is wrong, naming the job by the values that vary;
    returns the number of jobs checked."""
    jobs = sweep_jobs(overrides)
    varying = [i for i in range(len(jobs[0])) if len({job[i] for job in jobs}) > 1] if jobs else []
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        for job in jobs:
            try:
                cfg, saved = job_config(job)
                validate(cfg, saved)
            except (UserError, HydraException, OmegaConfBaseException, OSError) as error:
                name = " ".join(job[i] for i in varying) or " ".join(job)
                raise ConfigError(f"sweep job {name}: {_one_line(error)} (no job was started)") from None
    return len(jobs)


def _one_line(error: Exception) -> str:
    """Hydra's composition errors put the reason in their cause, whose first line says it (the lines
    after it are OmegaConf's object types)."""
    parts = [str(error)] + ([str(error.__cause__)] if error.__cause__ and not isinstance(error, UserError) else [])
    return ": ".join(part.strip().splitlines()[0] for part in parts if part.strip())
