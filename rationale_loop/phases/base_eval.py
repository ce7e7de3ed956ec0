"""Where a model starts: greedy held-out accuracy of the base model as loaded, before SFT, written to
round_00/base_eval.jsonl and reported beside round 0's (the first row of the rounds table, the report and
the card). It is asked exactly as every round asks (the run's prompt format; with task.prompt_format=model,
the model's own chat template), and its answers are read from free text (free_text.py), since a model
that has not been finetuned yet does not know the layout's answer header.

eval.base_model: null (the default) evaluates a pretrained base and not the tiny model, whose random
weights answer nothing; true or false to choose."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rationale_loop.judging.evaluate import accuracy_metrics, evaluate as evaluate_questions
from rationale_loop.judging.free_text import FreeTextReading
from rationale_loop.phases.context import Engines, RunContext

log = logging.getLogger(__name__)
OUTPUT = "base_eval.jsonl"
PREFIX = "base_"  # its metrics in round 0's: base_eval_accuracy, base_eval_questions, base_eval_valid


def wanted(cfg: Any) -> bool:
    return cfg.eval.base_model if cfg.eval.base_model is not None else cfg.model.source != "tiny"


def base_eval(ctx: RunContext, k: int, engines: Engines) -> None:
    if not wanted(ctx.cfg):
        return
    cfg, base = ctx.cfg, ctx.base_model_path()
    questions, _ = ctx.fitting(ctx.splits.eval, cfg.eval.max_new_tokens, Path(base), "evaluation")
    metrics = evaluate_questions(engines.get(Path(base), cfg.eval.batch_size), questions, FreeTextReading(ctx.fmt), cfg.verify.kind,
                                 cfg.eval.max_new_tokens, ctx.round_dir(0) / OUTPUT, stop=ctx.stop(), chain="ignore")
    log.info("base model, before SFT: held-out accuracy %.3f (%d questions, answers read from free text; %.3f found)",
             metrics["eval_accuracy"], metrics["eval_questions"], metrics["eval_valid"])


def base_metrics(round0: Path) -> dict[str, Any]:
    """The base model's held-out metrics, each key prefixed with base_; {} when it was not evaluated."""
    if not (round0 / OUTPUT).exists():
        return {}
    from collections import Counter

    from rationale_loop.run.records import Generation, JsonlRecords

    samples = list(JsonlRecords(round0 / OUTPUT, Generation))  # read once: the metrics and the reasons
    reasons = Counter(s.invalid_reason for s in samples if s.invalid_reason)
    return {**{PREFIX + key: value for key, value in accuracy_metrics(samples).items()},
            PREFIX + "invalid_reasons": dict(sorted(reasons.items()))}
