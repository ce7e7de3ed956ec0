"""The mine phase: round k's pairs (chosen = a correct sample, rejected = an incorrect one of the same
question, rationale_loop/judging/mine.py) and its counts, read one question at a time from generations.jsonl
so memory stays flat as the pool grows. Objectives that ask for more sample here as well: SPIN's one
sample per SFT question (sft_generations.jsonl) and STaR's rationalization of the unsolved questions
(rationalizations.jsonl). stats.json is written last and marks the phase done."""

from __future__ import annotations

import logging
from dataclasses import replace

from rationale_loop.run.faults import crash_point
from rationale_loop.generate import Backend, Sampling
from rationale_loop.judging.mine import mine_question
from rationale_loop.training.objectives import OBJECTIVES
from rationale_loop.phases.context import Engines, RunContext
from rationale_loop.phases.sample import OUTPUT as GENERATIONS, pool_that_fits
from rationale_loop.run.records import Generation, JsonlRecords, Problem, group_by, write_json_atomic, write_jsonl_atomic
from rationale_loop.judging.rollouts import sample_and_judge
from rationale_loop.judging.stats import SampleStats

log = logging.getLogger(__name__)
OUTPUT = "stats.json"


def mine(ctx: RunContext, k: int, engines: Engines) -> None:
    out = ctx.round_dir(k)
    pool, too_long = pool_that_fits(ctx, k)
    sampling = ctx.sampling(k)
    counts = SampleStats(n=sampling.n)
    solved: set[str] = set()

    def pairs():
        for group in group_by(JsonlRecords(out / GENERATIONS, Generation), "question_id"):
            counts.add_question(group)
            if any(g.correct for g in group):
                solved.add(group[0].question_id)
            yield from mine_question(group, ctx.problems[group[0].question_id])

    written = write_jsonl_atomic(out / "pairs.jsonl", pairs())
    stats = {**counts.result(), "pairs": written, "skipped_too_long": too_long}
    backend = lambda: engines.get(ctx.start_checkpoint(k), ctx.cfg.generate.batch_size)  # noqa: E731 (made only if needed)
    if OBJECTIVES.get(ctx.cfg.objective.name).samples_sft_questions:
        stats["sft_samples"] = write_jsonl_atomic(out / "sft_generations.jsonl", _sample_sft_questions(ctx, backend(), sampling))
    if ctx.cfg.objective.rationalize:
        unsolved = [p for p in pool if p.id not in solved]
        rationalizations = _rationalize(ctx, backend(), unsolved, sampling)
        write_jsonl_atomic(out / "rationalizations.jsonl", rationalizations)
        stats["rationalized"] = len(rationalizations)
    write_json_atomic(out / OUTPUT, stats)
    crash_point("mined")


def _sample_sft_questions(ctx: RunContext, backend: Backend, sampling: Sampling) -> list[Generation]:
    """One sample of the round's starting model per SFT question (SPIN's rejected side)."""
    log.info("sampling the %d SFT questions once each (the objective plays against its SFT data)", len(ctx.splits.sft))
    groups = sample_and_judge(backend, ctx.splits.sft, ctx.fmt, replace(sampling, n=1), ctx.cfg.verify.kind,
                              desc="sample SFT questions", chain=ctx.cfg.verify.chain)
    return sorted((g for group in groups for g in group), key=lambda g: g.question_id)


def _rationalize(ctx: RunContext, backend: Backend, unsolved: list[Problem], sampling: Sampling) -> list[Generation]:
    """STaR's rationalization: ask every question with no correct sample again, the gold answer given
    as a hint; keep the samples that reach it, recorded under the prompt without the hint."""
    log.info("rationalization: %d unsolved questions asked again with the answer as a hint", len(unsolved))
    groups = sample_and_judge(backend, unsolved, ctx.fmt, sampling, ctx.cfg.verify.kind, desc="rationalize",
                              chain=ctx.cfg.verify.chain, hinted=True)
    kept = [replace(sample, prompt=ctx.fmt.prompt(ctx.problems[sample.question_id].question))
            for group in groups for sample in group if sample.correct]
    return sorted(kept, key=lambda g: (g.question_id, g.sample_index))
