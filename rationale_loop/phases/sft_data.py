"""The SFT data mix: data='s chat and instruction sources rendered once into round_00 (data/sources.py),
by SFT or ahead of it by `make data`, with the settings it was made with (data.yaml); a mix made with
other data settings is derived data of another config, and is made again."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rationale_loop.config import config_differences, flatten, saved_form, under
from rationale_loop.data.sources import MIX_MANIFEST, prepare_sft_mix
from rationale_loop.paths import remove
from rationale_loop.phases.context import RunContext
from rationale_loop.records import atomic_writer
from rationale_loop.run_config import DATA_SETTINGS, NO_WORK, OVERRIDES, holds_work, read_saved_config
from rationale_loop.rundir import is_done

log = logging.getLogger(__name__)

# The settings the SFT data mix depends on: `make data` records these alone (round_00/data.yaml).
DATA_KEYS = ("data", "task", "model", "seed", "sft.max_length")


def prepare_data(ctx: RunContext) -> Path:
    """Prepare the SFT data mix into round 0, as SFT would and once (`make data`); SFT then reads it.
    Only the settings the mix depends on are recorded (data.yaml): SFT's own settings stay free."""
    out = ctx.round_dir(0)
    if is_done(ctx.dir, 0) or (out.is_dir() and holds_work(out)):
        return out  # SFT has started: its mix is there, made with its config
    out.mkdir(parents=True, exist_ok=True)
    drop_stale_mix(ctx, out)
    with atomic_writer(out / DATA_SETTINGS) as handle:
        handle.write(OmegaConf.to_yaml(OmegaConf.create(data_settings(saved_form(ctx.cfg)))))
    prepare_mix(ctx, out)
    return out


def prepare_mix(ctx: RunContext, out: Path) -> None:
    """The chat and instruction sources of data=, prepared once into round_00."""
    from rationale_loop.model import load_tokenizer

    if not ctx.cfg.data.sources or (out / MIX_MANIFEST).exists():
        return
    tokenizer = load_tokenizer(ctx.base_model_path(), ctx.cfg.model.trust_remote_code)
    manifest = prepare_sft_mix(ctx.cfg.data, [p.question for p in ctx.splits.eval], tokenizer, out, ctx.cfg.seed,
                               max_length=ctx.cfg.sft.max_length, reasoning_template=ctx.fmt.template)
    log.info("SFT data mix: %d rendered rows; per source %s; per format %s", manifest["rendered_rows"],
             {name: entry["kept"] for name, entry in manifest["sources"].items()}, manifest["formats"])


def data_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a resolved config that the SFT data mix depends on (DATA_KEYS)."""
    return {key: value for key, value in flatten(config).items() if under(key, DATA_KEYS)}


def drop_stale_mix(ctx: RunContext, out: Path) -> None:
    """A mix prepared (by `make data`, or a round 0 that stopped before training) with other data
    settings than this call's is derived data made for another config: delete it, saying so."""
    if not (out / MIX_MANIFEST).exists():
        return
    recorded = out / DATA_SETTINGS if (out / DATA_SETTINGS).exists() else out / "config.yaml"
    previous = data_settings(read_saved_config(recorded)) if recorded.exists() else {}
    differences = config_differences(previous, data_settings(saved_form(ctx.cfg)))
    if differences:
        log.warning("%s: the SFT data mix was prepared with other data settings; preparing it again:\n  %s",
                    out, "\n  ".join(differences))
        for name in sorted(NO_WORK - {"config.yaml", OVERRIDES}):
            if (out / name).exists():
                remove(out / name, inside=ctx.dir)
