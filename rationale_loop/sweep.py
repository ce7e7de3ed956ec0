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
from pathlib import Path
from typing import Iterator, Sequence

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from rationale_loop.config.errors import ConfigError, UserError
from rationale_loop.config.keys import config_groups, schema_keys
from rationale_loop.preflight.config_checks import unread_option_keys, validate
from rationale_loop.config.paths import check_output_root, check_run_name, shown
from rationale_loop.run.run_config import merge_overrides, override_key, remembered_overrides, split_drops, with_run_named
from rationale_loop.run.rundir import run_dir


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


def job_config(job: list[str], drops: Sequence[str] = ()) -> tuple[DictConfig, list[str]]:
    """The config a job would run with, and the overrides it would save (compose_remembered, as the job
    itself will compose them). `drops`, the command line's `~key`s, are every job's. Needs an initialised
    Hydra (initialize_config_dir)."""
    name = _run_name(job)
    first = compose(config_name="config", overrides=with_run_named(job, name))
    cfg, merged, _ = compose_remembered(first, [*job, *drops], name)
    return cfg, merged


def compose_remembered(first: DictConfig, typed: list[str], name: str) -> tuple[DictConfig, list[str], list[str]]:
    """The config a call on a run runs with, the overrides its rounds save, and the lines that say what it
    kept and dropped of the run's remembered overrides. The run's remembered overrides (run_config.py) with this call's `typed` ones laid
    over them, composed again; `first` is the config of the typed ones alone but their `~key`s (which name
    the run), `name` the run's name as resolved. Two things drop a remembered override: a typed `~key`,
    and a newly chosen option that does not read it (objective.rank_weight after objective=star), which
    would otherwise refuse the call for a key the user did not type; a typed key the option does not read
    is still refused (validate)."""
    check_output_root(first.output_root)  # before the run's directory is looked into
    check_run_name(first.run)
    run = run_dir(first)
    saved, source = remembered_overrides(run, first.init_from)
    _check_drops(saved, typed, run)
    merged = merge_overrides(saved, typed)
    if not saved and not split_drops(typed)[1]:
        return first, merged, []
    origin = f"remembered from {shown(source)}" if source else "remembered"
    dropping = {override_key(o)[1] for o in typed if override_key(o)[0] == "~"}
    notes = [f"~{override_key(o)[1]}: {o} ({origin}) dropped" for o in saved if override_key(o)[1] in dropping]
    cfg = compose(config_name="config", overrides=with_run_named(merged, name))
    typed_keys = {override_key(o)[1] for o in typed}
    unread = [(o, choice) for o, choice, _ in unread_option_keys(cfg, merged) if override_key(o)[1] not in typed_keys]
    if unread:
        notes += [f"{choice} does not read {override_key(o)[1]} ({o}, {origin}): dropped" for o, choice in unread]
        merged = [o for o in merged if o not in {o for o, _ in unread}]
        cfg = compose(config_name="config", overrides=with_run_named(merged, name))
    if saved:
        kept = [o for o in merged if o not in typed]
        notes.insert(0, f"{shown(run)}: with its saved overrides {' '.join(kept) if kept else '(none)'}")
    return cfg, merged, notes


def _check_drops(saved: list[str], typed: list[str], run: Path) -> None:
    """A `~key` drops a remembered override; naming a key of the schema that the run does not remember,
    it is one line, not Hydra's "does not support deletion" (a key of the config is set, never deleted).
    Group choices and entries of free-form dicts (data.sources.x) are Hydra's to delete."""
    remembered, keys = {override_key(o)[1] for o in saved}, schema_keys()
    for override in typed:
        prefix, key = override_key(override)
        free = any(keys.get(".".join(key.split(".")[:i])) for i in range(1, key.count(".") + 1))
        if prefix == "~" and key not in remembered and key in keys and key not in config_groups() and not free:
            raise ConfigError(f"~{key} drops an override the run remembers, and {shown(run)} remembers none of {key}: "
                              f"a key of the config is set ({key}=...), never deleted")


def check_sweep(overrides: Sequence[str], config_dir: str) -> int:
    """Refuse the whole sweep if any job's config is wrong, naming the job by the values that vary;
    returns the number of jobs checked. The `~key`s are every job's, never swept (cli.main)."""
    overrides, drops = split_drops(overrides)
    jobs = sweep_jobs(overrides)
    varying = [i for i in range(len(jobs[0])) if len({job[i] for job in jobs}) > 1] if jobs else []
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        for job in jobs:
            try:
                cfg, saved = job_config(job, drops)
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
