"""The evaluate phase: greedy held-out accuracy of round k's checkpoint, one sample per evaluation
question, written to eval.jsonl; read back from it when an interrupted call already wrote it."""

from __future__ import annotations

import logging
from typing import Any

from rationale_loop.evaluate import evaluate as evaluate_questions, metrics_from_file
from rationale_loop.faults import crash_point
from rationale_loop.phases.context import Engines, RunContext

log = logging.getLogger(__name__)
OUTPUT = "eval.jsonl"


def evaluate(ctx: RunContext, k: int, engines: Engines) -> dict[str, Any]:
    out, cfg = ctx.round_dir(k), ctx.cfg
    checkpoint = out / "checkpoint"
    questions, too_long = ctx.fitting(ctx.splits.eval, cfg.eval.max_new_tokens, checkpoint, "evaluation")
    if (out / OUTPUT).exists():
        return {**metrics_from_file(out / OUTPUT), "eval_skipped_too_long": too_long}
    metrics = evaluate_questions(engines.get(checkpoint, cfg.eval.batch_size), questions, ctx.fmt, cfg.verify.kind,
                                 cfg.eval.max_new_tokens, out / OUTPUT, stop=ctx.stop(), chain=cfg.verify.chain)
    metrics["eval_skipped_too_long"] = too_long
    log.info("held-out accuracy %.3f (%d questions, %.3f valid)", metrics["eval_accuracy"], metrics["eval_questions"], metrics["eval_valid"])
    crash_point("evaluated")
    return metrics
