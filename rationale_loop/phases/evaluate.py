"""The evaluate phase: greedy held-out accuracy of round k's checkpoint, one sample per evaluation
question, written to eval.jsonl; read back from it when an interrupted call already wrote it. With
generate.workers > 1 the questions are shared by that many processes (phases/workers.py), with the same
bytes as one."""

from __future__ import annotations

import logging
from typing import Any

from rationale_loop.judging.evaluate import evaluate as evaluate_questions, metrics_from_file
from rationale_loop.run.faults import crash_point
from rationale_loop.phases.context import Engines, RunContext
from rationale_loop.phases.workers import evaluate_job, generate_job

log = logging.getLogger(__name__)
OUTPUT = "eval.jsonl"


def evaluate(ctx: RunContext, k: int, engines: Engines) -> dict[str, Any]:
    out, cfg, job = ctx.round_dir(k), ctx.cfg, evaluate_job(ctx, k)
    too_long = len(ctx.splits.eval) - len(job.problems)
    if (out / OUTPUT).exists():
        return {**metrics_from_file(out / OUTPUT), "eval_skipped_too_long": too_long}
    if cfg.generate.workers > 1:
        generate_job(ctx, k, job, engines)
        metrics = metrics_from_file(out / OUTPUT)
    else:
        metrics = evaluate_questions(engines.get(job.checkpoint, job.batch_size), job.problems, ctx.fmt, cfg.verify.kind,
                                     cfg.eval.max_new_tokens, out / OUTPUT, stop=ctx.stop(), chain=cfg.verify.chain)
    metrics["eval_skipped_too_long"] = too_long
    log.info("held-out accuracy %.3f (%d questions, %.3f valid)", metrics["eval_accuracy"], metrics["eval_questions"], metrics["eval_valid"])
    crash_point("evaluated")
    return metrics
