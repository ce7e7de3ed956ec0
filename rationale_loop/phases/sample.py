"""The sample phase: round k's starting model answers every question of the pool generate.n times, each
answer judged (rationale_loop/rollouts.py); the output is generations.jsonl.

A question's samples are appended to a partial file as soon as they are judged, a resumed call keeps every
complete question, and generations.jsonl appears, sorted by question and sample, only when the whole pool
is done. With generate.workers > 1 the pool is shared by that many processes (phases/workers.py), with the
same bytes as one."""

from __future__ import annotations

import logging

from rationale_loop.faults import crash_point
from rationale_loop.objectives import OBJECTIVES
from rationale_loop.phases.context import Engines, RunContext
from rationale_loop.phases.workers import complete_so_far, generate_into, merge, partial_file, pool_that_fits, run_in_workers, sample_job
from rationale_loop.records import write_jsonl_atomic

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
        done = complete_so_far(out, job)
        todo = [i for i, problem in enumerate(job.problems) if problem.id not in done]
        if done:
            log.info("resuming generation: %d of %d questions were already sampled", len(done), len(job.problems))
        if todo and ctx.cfg.generate.workers > 1:
            engines.close()  # each worker loads its own engine; the memory this one holds is theirs
            run_in_workers(ctx, k, job, todo)
        elif todo:
            generate_into(ctx, engines.get(job.checkpoint, job.batch_size), job, todo, partial_file(out, job))
        merge(out, job, k)
    else:  # the file contract holds, with nothing in it
        log.info("round %d: objective %s uses no samples; the pool is not sampled", k, ctx.cfg.objective.name)
        write_jsonl_atomic(out / OUTPUT, [])
    crash_point("generated")
