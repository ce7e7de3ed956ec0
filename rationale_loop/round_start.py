"""Opening round k to work in: an interrupted call's, to finish with the config it started with, or a new
one holding this call's config and overrides. This is the one place a round's config is compared with
another's: a partial round with another config is refused (or, with force=true, cleared), and a new
round says how its config differs from the round before it (docs/run-directory.md)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from rationale_loop.config import ConfigError, config_differences, saved_form
from rationale_loop.paths import remove
from rationale_loop.phases.context import RunContext
from rationale_loop.phases.sft_data import drop_stale_mix
from rationale_loop.records import atomic_writer
from rationale_loop.run_config import holds_work, read_saved_config, write_overrides
from rationale_loop.rundir import remove_leftovers

log = logging.getLogger(__name__)


def open_round(ctx: RunContext, k: int, overrides: list[str] | None) -> Path:
    """Round k's directory, ready to (go on) work in. `overrides` are the ones this call runs with
    (run_config.py), saved beside the config; None when the config was composed elsewhere (tests, the API)."""
    out = ctx.round_dir(k)
    if not _resumable(ctx, out):
        if k > 0:
            _say_differences(ctx, k - 1)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_writer(out / "config.yaml") as handle:
            handle.write(OmegaConf.to_yaml(OmegaConf.create(saved_form(ctx.cfg))))
        if overrides is not None:
            write_overrides(out, overrides)
    return out


def differences_from(ctx: RunContext, saved_config: Path) -> list[str]:
    """The recipe keys on which this call's config differs from a round's saved config.yaml."""
    return config_differences(read_saved_config(saved_config), saved_form(ctx.cfg))


def _say_differences(ctx: RunContext, previous: int) -> None:
    """How this round's config differs from the round before it. The run's overrides are remembered
    (run_config.py), so a difference is one the user typed: a deliberate change, kept for the rounds that
    follow, shown so that it is never a silent one. The first round of a fork may change the recipe:
    that is what forks are for."""
    before = ctx.round_dir(previous)
    differences = differences_from(ctx, before / "config.yaml")
    if before.is_symlink():
        log.info("forked run: config changes from %s:\n  %s", before.resolve(), "\n  ".join(differences) or "none")
    elif differences:
        log.warning("round %d changes the config of %s (kept for the rounds after it):\n  %s",
                    previous + 1, before, "\n  ".join(differences))


def _resumable(ctx: RunContext, out: Path) -> bool:
    """True when `out` holds an interrupted run of this round with this config, to be finished. A partial
    round with another config is refused, naming the keys, or with force=true cleared."""
    if not out.exists():
        return False
    if not holds_work(out):
        # No phase has finished (a first command that failed, `make data`): nothing to keep but a data
        # mix that still fits; the round starts with this call's config, whatever it had.
        drop_stale_mix(ctx, out)
        return False
    saved = out / "config.yaml"
    if not saved.exists():  # died before its config was written: nothing in it to keep
        remove(out, inside=ctx.dir)
        return False
    differences = differences_from(ctx, saved)
    if not differences:
        log.info("%s was interrupted; going on from where it stopped", out)
        remove_leftovers(out)
        return True
    listing = "\n  ".join(differences)
    if not ctx.cfg.force:
        raise ConfigError(
            f"{out} was interrupted, and the config differs from the one it started with:\n  {listing}\n"
            "go back to it to finish the round, or pass force=true to clear the round and start it again"
        )
    log.warning("force=true: clearing the interrupted %s, which started with another config:\n  %s", out, listing)
    remove(out, inside=ctx.dir)
    remove(ctx.dir / "tensorboard" / out.name, inside=ctx.dir)
    return False
