"""The sample phase: round k's starting model answers every question of the pool generate.n times, each
answer judged (rationale_loop/rollouts.py); the output is generations.jsonl."""

from __future__ import annotations

import logging

from rationale_loop.errors import DataError
from rationale_loop.faults import crash_point
from rationale_loop.objectives import OBJECTIVES
from rationale_loop.phases.context import Engines, RunContext
from rationale_loop.records import append_jsonl, sort_jsonl, write_jsonl_atomic
from rationale_loop.rollouts import sample_and_judge
from rationale_loop.rundir import keep_complete_questions

log = logging.getLogger(__name__)
OUTPUT = "generations.jsonl"


def pool_that_fits(ctx: RunContext, k: int):
    """Round k's pool: the questions whose prompt leaves room for generate.max_new_tokens, and how many
    did not fit."""
    return ctx.fitting(ctx.splits.pool, ctx.cfg.generate.max_new_tokens, ctx.start_checkpoint(k), f"round {k}: the pool")


def sample(ctx: RunContext, k: int, engines: Engines) -> None:
    out = ctx.round_dir(k)
    pool, _ = pool_that_fits(ctx, k)
    if not pool:
        log.warning("round %d: no question of the pool can be asked; nothing is sampled", k)
        write_jsonl_atomic(out / OUTPUT, [])
    elif OBJECTIVES.get(ctx.cfg.objective.name).uses_samples:  # a declaration of its class: nothing is built
        start = ctx.start_checkpoint(k)
        log.info("round %d: sampling %d x %d completions from %s", k, len(pool), ctx.cfg.generate.n, start)
        _sample_pool(ctx, k, engines.get(start, ctx.cfg.generate.batch_size), pool)
    else:  # the file contract holds, with nothing in it
        log.info("round %d: objective %s uses no samples; the pool is not sampled", k, ctx.cfg.objective.name)
        write_jsonl_atomic(out / OUTPUT, [])
    crash_point("generated")


def _sample_pool(ctx: RunContext, k: int, backend, pool) -> None:
    """Sample and judge the pool, appending each question's samples as they come, so a crash loses at
    most the batch in flight; a resumed call keeps the questions already complete. The file appears,
    sorted by question and sample, only when the whole pool is done."""
    out = ctx.round_dir(k)
    sampling = ctx.sampling(k)
    partial = out / f"{OUTPUT}.partial"
    done = keep_complete_questions(partial, sampling.n)
    index_of = {p.id: i for i, p in enumerate(pool)}
    if done:
        log.info("resuming generation: %d of %d questions were already sampled", len(done), len(pool))
    unknown = sorted(done - index_of.keys())
    if unknown:
        raise DataError(f"{partial} holds samples of questions that are not in the pool now ({unknown[:3]}...): "
                        "the task's data changed since the round started; restore it, or delete the file to sample again")
    skip = {index_of[q] for q in done}
    for group in sample_and_judge(backend, pool, ctx.fmt, sampling, ctx.cfg.verify.kind, skip=skip, chain=ctx.cfg.verify.chain):
        append_jsonl(partial, group)
        crash_point("generate")
    sort_jsonl(partial, out / OUTPUT, key=lambda row: (row["question_id"], row["sample_index"]))
    partial.unlink()
