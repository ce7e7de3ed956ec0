"""Opening round k to work in: an interrupted call's, to finish with the config it started with, or a new
one holding this call's config and overrides. This is the one place a round's config is compared with
another's: a partial round with another config is refused (or, with force=true, cleared), and a new
round says how its config differs from the round before it (docs/run-directory.md). Round 0's SFT data
mix, derived data that holds no work, is kept only while the data settings it was made with still hold."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rationale_loop.config.paths import remove
from rationale_loop.config.errors import ConfigError
from rationale_loop.config.saved import config_differences, flatten, saved_form, under
from rationale_loop.run.records import atomic_writer
from rationale_loop.run.run_config import (DATA_SETTINGS, MIX_MANIFEST, NO_WORK, OVERRIDES, holds_work, read_saved_config,
                                           write_overrides)
from rationale_loop.run.rundir import remove_leftovers, round_dir

log = logging.getLogger(__name__)

# The settings the SFT data mix depends on: `make data` records these alone (round_00/data.yaml).
DATA_KEYS = ("data", "task", "model", "seed", "sft.max_length")


def open_round(cfg: Any, run: Path, k: int, overrides: list[str] | None) -> Path:
    """Round k's directory of the run directory `run`, ready to (go on) work in under the config `cfg`.
    `overrides` are the ones this call runs with (run_config.py), saved beside the config; None when the
    config was composed elsewhere (tests, the API)."""
    out = round_dir(run, k)
    if not _resumable(cfg, run, out):
        if k > 0:
            _say_differences(cfg, run, k - 1)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_writer(out / "config.yaml") as handle:
            handle.write(OmegaConf.to_yaml(OmegaConf.create(saved_form(cfg))))
        if overrides is not None:
            write_overrides(out, overrides)
    return out


def differences_from(cfg: Any, saved_config: Path) -> list[str]:
    """The recipe keys on which this call's config differs from a round's saved config.yaml."""
    return config_differences(read_saved_config(saved_config), saved_form(cfg))


def _say_differences(cfg: Any, run: Path, previous: int) -> None:
    """How this round's config differs from the round before it. The run's overrides are remembered
    (run_config.py), so a difference is one the user typed: a deliberate change, kept for the rounds that
    follow, shown so that it is never a silent one. The first round of a fork may change the recipe:
    that is what forks are for."""
    before = round_dir(run, previous)
    differences = differences_from(cfg, before / "config.yaml")
    if before.is_symlink():
        log.info("forked run: config changes from %s:\n  %s", before.resolve(), "\n  ".join(differences) or "none")
    elif differences:
        log.warning("round %d changes the config of %s (kept for the rounds after it):\n  %s",
                    previous + 1, before, "\n  ".join(differences))


def _resumable(cfg: Any, run: Path, out: Path) -> bool:
    """True when `out` holds an interrupted run of this round with this config, to be finished. A partial
    round with another config is refused, naming the keys, or with force=true cleared."""
    if not out.exists():
        return False
    if not holds_work(out):
        # No phase has finished (a first command that failed, `make data`): nothing to keep but a data
        # mix that still fits; the round starts with this call's config, whatever it had.
        drop_stale_mix(cfg, run, out)
        return False
    saved = out / "config.yaml"
    if not saved.exists():  # died before its config was written: nothing in it to keep
        remove(out, inside=run)
        return False
    differences = differences_from(cfg, saved)
    if not differences:
        log.info("%s was interrupted; going on from where it stopped", out)
        remove_leftovers(out)
        return True
    listing = "\n  ".join(differences)
    if not cfg.force:
        raise ConfigError(
            f"{out} was interrupted, and the config differs from the one it started with:\n  {listing}\n"
            "go back to it to finish the round, or pass force=true to clear the round and start it again"
        )
    log.warning("force=true: clearing the interrupted %s, which started with another config:\n  %s", out, listing)
    remove(out, inside=run)
    remove(run / "tensorboard" / out.name, inside=run)
    return False


def data_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a resolved config that the SFT data mix depends on (DATA_KEYS)."""
    return {key: value for key, value in flatten(config).items() if under(key, DATA_KEYS)}


def drop_stale_mix(cfg: Any, run: Path, out: Path) -> None:
    """A mix prepared (by `make data`, or a round 0 that stopped before training) with other data
    settings than this call's is derived data made for another config: delete it, saying so."""
    if not (out / MIX_MANIFEST).exists():
        return
    recorded = out / DATA_SETTINGS if (out / DATA_SETTINGS).exists() else out / "config.yaml"
    previous = data_settings(read_saved_config(recorded)) if recorded.exists() else {}
    differences = config_differences(previous, data_settings(saved_form(cfg)))
    if differences:
        log.warning("%s: the SFT data mix was prepared with other data settings; preparing it again:\n  %s",
                    out, "\n  ".join(differences))
        for name in sorted(NO_WORK - {"config.yaml", OVERRIDES}):
            if (out / name).exists():
                remove(out / name, inside=run)
