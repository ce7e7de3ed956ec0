"""The sample phase: round k's starting model answers every question of the pool generate.n times, each
answer judged (rationale_loop/judging/rollouts.py); the output is generations.jsonl.

A question's samples are appended to a partial file as soon as they are judged, a resumed call keeps every
complete question, and generations.jsonl appears, sorted by question and sample, only when the whole pool
is done. With generate.workers > 1 the pool is shared by that many processes (phases/workers.py), with the
same bytes as one."""

from __future__ import annotations

import logging

from rationale_loop.run.faults import crash_point
from rationale_loop.training.objectives import OBJECTIVES
from rationale_loop.phases.context import Engines, RunContext
from rationale_loop.phases.workers import generate_job, pool_that_fits, sample_job
from rationale_loop.run.records import write_jsonl_atomic

log = logging.getLogger(__name__)
OUTPUT = "generations.jsonl"

__all__ = ["OUTPUT", "pool_that_fits", "sample"]


def sample(ctx: RunContext, k: int, engines: Engines) -> None:
    out, job = ctx.round_dir(k), sample_job(ctx, k)
    if not job.problems:
        log.warning("round %d: no question of the pool can be asked; nothing is sampled", k)
        write_jsonl_atomic(out / OUTPUT, [])
    elif OBJECTIVES.get(ctx.cfg.objective.name).uses_samples:  # a declaration of its class: nothing is built
        log.info("round %d: sampling %d x %d completions from %s", k, len(job.problems), job.sampling.n, job.checkpoint)
        generate_job(ctx, k, job, engines)
    else:  # the file contract holds, with nothing in it
        log.info("round %d: objective %s uses no samples; the pool is not sampled", k, ctx.cfg.objective.name)
        write_jsonl_atomic(out / OUTPUT, [])
    crash_point("generated")
