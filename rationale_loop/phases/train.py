"""The train phase: round k's weights from the round's inputs on disk, written as train.json (losses and
counts) and, last, checkpoint/ (atomically: a round whose checkpoint exists has finished training).
Round 0 is SFT on the task's gold rationales (and data='s mix); round k > 0 trains the round's
objective on what the sample and mine phases wrote, from round k - 1's checkpoint.

With launch=ddp (or another launcher) the phase runs in worker processes (rationale_loop/worker.py),
each of which calls `train_here` with a context built from the round's config.yaml."""

from __future__ import annotations

import logging
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from rationale_loop.models.adapters import attach, load_for_training, merge
from rationale_loop.data.sources import read_preference_pairs, read_sft_mix
from rationale_loop.data.formats import MODEL_FORMAT
from rationale_loop.data.templates import get_template
from rationale_loop.training.diagnostics import pair_scores, ranking_summary, term_at_ends
from rationale_loop.config.errors import UserError
from rationale_loop.run.faults import crash_point
from rationale_loop.phases.launch import run_training_worker
from rationale_loop.models.merge import average_into
from rationale_loop.models.model import autocasts_bf16, load_tokenizer, load_weights, save_checkpoint
from rationale_loop.training.objectives import RoundData, SFTItem, SupervisedObjective, build_objective
from rationale_loop.phases.context import Engines, RunContext
from rationale_loop.phases.sft_data import prepare_mix
from rationale_loop.run.records import Generation, JsonlRecords, Pair, write_json_atomic
from rationale_loop.training.train import is_main_process, train as run_training

log = logging.getLogger(__name__)
OUTPUT = "checkpoint"
TRAIN_STATE = "train_state.pt"  # a resumable training state, while training runs
TRAIN_SUMMARY = "train.json"  # the training phase's losses and counts, written just before the checkpoint


def train(ctx: RunContext, k: int, engines: Engines | None = None) -> None:
    """Round k's training, in this process or as workers under accelerate (launch=). The generation
    engine is closed first: training needs its memory, and the workers load their own weights."""
    if engines is not None:
        engines.close()
    out = ctx.round_dir(k)
    if k == 0:
        prepare_mix(ctx, out)
    if ctx.cfg.launch.kind == "local":
        train_here(ctx, k)
        return
    run_training_worker(ctx.cfg.launch, ctx.dir, k)
    if not (out / OUTPUT).exists():
        raise UserError(f"round {k}: the training worker exited without writing {out / OUTPUT}")


def train_here(ctx: RunContext, k: int) -> None:
    """Train round k in this process (one of several under a launcher) and save its checkpoint."""
    if k == 0:
        _sft(ctx)
    else:
        _self_train(ctx, k)


def _sft(ctx: RunContext) -> None:
    out, cfg = ctx.round_dir(0), ctx.cfg
    base = ctx.base_model_path()
    log.info("round 0 (SFT): base model %s, %d SFT examples", base, len(ctx.splits.sft))
    model = load_for_training(base, cfg.model, cfg.peft)
    tokenizer = load_tokenizer(base, cfg.model.trust_remote_code)
    items = [SFTItem(ctx.fmt.prompt(p.question), ctx.fmt.response(p.rationale, p.answer)) for p in ctx.splits.sft]
    mixed = read_sft_mix(out)
    if mixed:
        items += mixed
        # Plain transformers and vLLM's chat endpoint then render chats as the model was trained on them; a run
        # asked in the model's own template keeps that one (the export adds the rationale header to it).
        if cfg.task.prompt_format != MODEL_FORMAT:
            tokenizer.chat_template = get_template(cfg.data.formats[0]).chat_template()
        log.info("round 0 (SFT): %d task examples and %d rendered conversation rows", len(ctx.splits.sft), len(mixed))
    _train_and_save(ctx, model, tokenizer, items, SupervisedObjective(), cfg.sft, cfg.seed, "sft", out, start=base)


def _self_train(ctx: RunContext, k: int) -> None:
    out, cfg, start = ctx.round_dir(k), ctx.cfg, ctx.start_checkpoint(k)
    objective = build_objective(cfg.objective)
    pairs = list(JsonlRecords(out / "pairs.jsonl", Pair))
    rationalizations = _records(out / "rationalizations.jsonl")
    sft_samples = _records(out / "sft_generations.jsonl")
    items = objective.items(RoundData(ctx.problems, JsonlRecords(out / "generations.jsonl", Generation), pairs, ctx.fmt,
                                      rationalizations=list(rationalizations), sft=ctx.splits.sft, sft_generations=sft_samples,
                                      seed=cfg.seed + k, preferences=_preferences(ctx, k)))
    model = load_for_training(start, cfg.model, cfg.peft)
    tokenizer = load_tokenizer(start, cfg.model.trust_remote_code)

    def rank_own_pairs(current: Any, when: str) -> dict[str, Any]:
        # In the precision the round trains in (what its rank term saw): under bf16 autocast these two passes
        # take 1/1.5 of their fp32 time (once 60% of a SmolLM2 round's training phase; pair_scores' shared
        # rows then cut them 2.3-2.6x, docs/benchmarks.md).
        device = next(current.parameters()).device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocasts_bf16(cfg.rank.mixed_precision, device)):
            scores = pair_scores(current, tokenizer, pairs, cfg.rank.max_length, cfg.rank.micro_batch_size, ctx.fmt.reply_end,
                                 cfg.rank.loss_chunk_tokens)
        return ranking_summary(scores, when)

    _train_and_save(ctx, model, tokenizer, items, objective, cfg.rank, cfg.seed + k, f"round {k}", out,
                    start=start, average_with=start, measure=rank_own_pairs)


def _records(path: Path) -> Any:
    """A round's optional samples file (SPIN's, rationalization's), empty when the objective wrote none."""
    return JsonlRecords(path, Generation) if path.exists() else []


def _train_and_save(
    ctx: RunContext, model: Any, tokenizer: Any, items: Any, objective: Any, train_cfg: Any, seed: int, desc: str, out: Path,
    start: str | Path, average_with: Path | None = None, measure: Callable[[Any, str], dict[str, Any]] | None = None,
) -> None:
    """Train, then write the summary and, last, the checkpoint (atomically). `measure(model, "before" |
    "after")` adds diagnostics of the starting model (measured before any resumed state is loaded, so
    always the round's start) and of the model that is saved."""
    cfg = ctx.cfg
    before = measure(model, "before") if measure else {}
    model = attach(model, cfg.peft, seed)
    result = run_training(model, tokenizer, items, objective, train_cfg, seed=seed, desc=desc, state_path=out / TRAIN_STATE,
                          log_dir=ctx.dir / "tensorboard" / out.name, reply_end=ctx.fmt.reply_end)
    if not is_main_process():
        return  # under a launcher, the main process merges, measures and writes; the others are done
    model = merge(model, cfg.peft, out / "adapter", start, cfg.model)
    if average_with is not None and cfg.average.method != "none":
        averaged = average_into(model, load_weights(average_with), cfg.average.method, cfg.average.factor)
        log.info("%s: %s-averaged %d tensors with %s (factor %.3f toward the new weights)",
                 desc, cfg.average.method, averaged, average_with, cfg.average.factor)
    summary = train_summary(result)
    if measure:
        summary.update({**before, **measure(model, "after"), **term_at_ends(result.history, "rank")})
        log.info("%s: own pairs ranked right %s -> %s, mean margin s_c - s_r %s -> %s, mean s_c %s -> %s; rank term %s -> %s",
                 desc, *(_fmt(summary.get(key)) for key in (
                     "pairs_ranked_right_before", "pairs_ranked_right_after", "pair_margin_before", "pair_margin_after",
                     "chosen_score_before", "chosen_score_after", "rank_term_first", "rank_term_last")))
    write_json_atomic(out / TRAIN_SUMMARY, summary)
    save_checkpoint(model, tokenizer, out / OUTPUT)
    (out / TRAIN_STATE).unlink(missing_ok=True)  # the checkpoint supersedes it (and it can be large)
    crash_point("trained")


def _preferences(ctx: RunContext, k: int) -> list[tuple[str, str, str]]:
    """Round k's share of data='s preference pairs (prepared in round 0): all of them, or with
    data.preference_per_round = n, the next n of a seeded order, so the rounds go through them in turn."""
    rows = [(r["prompt"], r["chosen"], r["rejected"]) for r in read_preference_pairs(ctx.round_dir(0))]
    n = ctx.cfg.data.preference_per_round
    if not rows or n <= 0 or n >= len(rows):
        chosen = rows
    else:
        random.Random(f"preferences/{ctx.cfg.seed}").shuffle(rows)
        chosen = [rows[(index + (k - 1) * n) % len(rows)] for index in range(n)]
    if chosen:
        log.info("round %d: %d preference pairs from data= ranked beside the mined pairs", k, len(chosen))
    return chosen


def train_summary(result: Any) -> dict[str, Any]:
    data = asdict(result)
    history = data.pop("history")
    return {
        "train_loss": data["mean_loss"],
        "train_items": data["items"],
        "train_dropped_too_long": data["dropped_too_long"],
        "train_steps": data["steps"],
        "train_tokens": data["tokens"],
        "train_processes": data["processes"],
        "train_shares": data["shares"],
        "train_padding_fraction": round(data["padding_fraction"], 4),
        "train_seconds": round(data["seconds"], 2),
        "train_history": history,
    }


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"
