"""The SFT data mix: data='s chat and instruction sources rendered once into round_00 (data/sources.py),
by SFT or ahead of it by `make data`, with the settings it was made with (data.yaml); a mix made with
other data settings is derived data of another config, and is made again."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from rationale_loop.config.saved import saved_form
from rationale_loop.data.sources import prepare_sft_mix
from rationale_loop.phases.context import RunContext
from rationale_loop.run.records import atomic_writer
from rationale_loop.run.round_start import data_settings, drop_stale_mix
from rationale_loop.run.run_config import DATA_SETTINGS, MIX_MANIFEST, holds_work
from rationale_loop.run.rundir import is_done

log = logging.getLogger(__name__)


def prepare_data(ctx: RunContext) -> Path:
    """Prepare the SFT data mix into round 0, as SFT would and once (`make data`); SFT then reads it.
    Only the settings the mix depends on are recorded (data.yaml): SFT's own settings stay free."""
    out = ctx.round_dir(0)
    if is_done(ctx.dir, 0) or (out.is_dir() and holds_work(out)):
        return out  # SFT has started: its mix is there, made with its config
    out.mkdir(parents=True, exist_ok=True)
    drop_stale_mix(ctx.cfg, ctx.dir, out)
    with atomic_writer(out / DATA_SETTINGS) as handle:
        handle.write(OmegaConf.to_yaml(OmegaConf.create(data_settings(saved_form(ctx.cfg)))))
    prepare_mix(ctx, out)
    return out


def prepare_mix(ctx: RunContext, out: Path) -> None:
    """The chat and instruction sources of data=, prepared once into round_00."""
    from rationale_loop.models.model import load_tokenizer

    if not ctx.cfg.data.sources or (out / MIX_MANIFEST).exists():
        return
    tokenizer = load_tokenizer(ctx.base_model_path(), ctx.cfg.model.trust_remote_code)
    manifest = prepare_sft_mix(ctx.cfg.data, [p.question for p in ctx.splits.eval], tokenizer, out, ctx.cfg.seed,
                               max_length=ctx.cfg.sft.max_length, reasoning_template=ctx.fmt.template)
    log.info("SFT data mix: %d rendered rows; per source %s; per format %s", manifest["rendered_rows"],
             {name: entry["kept"] for name, entry in manifest["sources"].items()}, manifest["formats"])
