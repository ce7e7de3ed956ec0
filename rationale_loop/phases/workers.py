"""A phase's generation shared by generate.workers processes under `accelerate launch`: the pool's
sampling (phases/sample.py) and the held-out evaluation (phases/evaluate.py).

A job names what is generated (its questions, sampling, batch size, checkpoint and output file) and is
worked out the same way by the Hydra process and by every worker from the round's config alone. The Hydra
process deals the questions still to do in whole seed units (generate/shards.py), writes the deal to
`<job>_workers.json` and launches the workers (rationale_loop/sample_worker.py); worker r appends its judged
samples to its own `<output>.partial.worker-r-of-N` as each question is done and writes a receipt; the
Hydra process merges every partial file, sorted by question and sample, into the output, and adds the
receipts (questions, seconds, machine, host, pid) to the deal's record. The output is byte-identical to one
process's, and a resumed call keeps every question any worker finished."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

from rationale_loop.config.errors import DataError, UserError
from rationale_loop.run.faults import crash_point
from rationale_loop.generate import Sampling, gpus_per_engine, resolve_backend, seed_units
from rationale_loop.generate.shards import deal
from rationale_loop.judging.evaluate import greedy_sampling
from rationale_loop.phases.context import RunContext
from rationale_loop.run.records import Problem, append_jsonl, read_json, sort_jsonl, write_json_atomic
from rationale_loop.judging.rollouts import sample_and_judge
from rationale_loop.run.rundir import keep_complete_questions

log = logging.getLogger(__name__)
RECEIPTS = ".worker_receipts"  # each worker's receipt while they run (a dot folder: a leftover of a kill)


@dataclass(frozen=True)
class Job:
    name: str  # "sample" | "evaluate": the launch's and the record's name
    problems: list[Problem]
    sampling: Sampling
    batch_size: int  # hf's prompts per batch, which the seed units follow
    checkpoint: Path
    output: str  # the file the merged samples go to, in the round's directory
    crash_point: str  # the named crash point passed after each question (run/faults.py)

    @property
    def record(self) -> str:
        return f"{self.name}_workers.json"


def pool_that_fits(ctx: RunContext, k: int) -> tuple[list[Problem], int]:
    """Round k's pool: the questions whose prompt leaves room for generate.max_new_tokens, and how many
    did not fit."""
    return ctx.fitting(ctx.splits.pool, ctx.cfg.generate.max_new_tokens, ctx.start_checkpoint(k), f"round {k}: the pool")


def sample_job(ctx: RunContext, k: int) -> Job:
    """Round k's pool sampling."""
    pool, _ = pool_that_fits(ctx, k)
    return Job("sample", pool, ctx.sampling(k), ctx.cfg.generate.batch_size, ctx.start_checkpoint(k), "generations.jsonl", "generate")


def evaluate_job(ctx: RunContext, k: int) -> Job:
    """Round k's held-out evaluation: one greedy sample per question that fits."""
    checkpoint = ctx.round_dir(k) / "checkpoint"
    questions, _ = ctx.fitting(ctx.splits.eval, ctx.cfg.eval.max_new_tokens, checkpoint, "evaluation")
    sampling = greedy_sampling(ctx.cfg.eval.max_new_tokens, ctx.stop(), ctx.fmt.reply_end)
    return Job("evaluate", questions, sampling, ctx.cfg.eval.batch_size, checkpoint, "eval.jsonl", "evaluate")


JOBS: dict[str, Callable[[RunContext, int], Job]] = {"sample": sample_job, "evaluate": evaluate_job}


def partial_file(out: Path, job: Job, rank: int | None = None, workers: int = 1) -> Path:
    """Where a job's samples are appended as they come: one file in process, one per worker otherwise."""
    return out / (f"{job.output}.partial" if rank is None else f"{job.output}.partial.worker-{rank}-of-{workers}")


def generate_into(ctx: RunContext, backend: Any, job: Job, wanted: Collection[int], target: Path) -> None:
    """Sample and judge the job's questions at the indices `wanted`, appending each question's samples to
    `target` as they come, so a crash loses at most the batch in flight. The backend is given every
    question with the rest skipped: it batches and seeds as for all of them."""
    wanted = set(wanted)
    skip = {i for i in range(len(job.problems)) if i not in wanted}
    for group in sample_and_judge(backend, job.problems, ctx.fmt, job.sampling, ctx.cfg.verify.kind, desc=job.name,
                                  skip=skip, chain=ctx.cfg.verify.chain):
        append_jsonl(target, group)
        crash_point(job.crash_point)


def complete_so_far(out: Path, job: Job) -> set[str]:
    """The questions with all their samples in the job's partial files (each trimmed to those, as a kill
    may have cut one mid-write); a file holding a question not in the job is refused, naming it."""
    done: set[str] = set()
    ids = {p.id for p in job.problems}
    for partial in sorted(out.glob(f"{job.output}.partial*")):
        complete = keep_complete_questions(partial, job.sampling.n)
        unknown = sorted(complete - ids)
        if unknown:
            raise DataError(f"{partial} holds samples of questions that are not in the pool now ({unknown[:3]}...): "
                            "the task's data changed since the round started; restore it, or delete the file to sample again")
        done |= complete
    return done


def merge(out: Path, job: Job, k: int) -> None:
    """The job's partial files, every question complete, as its output sorted by question and sample; then
    the partial files go."""
    complete = complete_so_far(out, job)
    missing = [p.id for p in job.problems if p.id not in complete]
    if missing:
        raise UserError(f"round {k}: {len(missing)} question(s) have no complete samples after the {job.name} phase's "
                        f"generation ({', '.join(missing[:3])}); the next call generates them")
    partials = sorted(out.glob(f"{job.output}.partial*"))
    sort_jsonl(partials, out / job.output, key=lambda row: (row["question_id"], row["sample_index"]))
    for partial in partials:
        partial.unlink()


def generate_job(ctx: RunContext, k: int, job: Job, engines: Any) -> None:
    """The job's output: the questions no partial file holds whole yet, generated in this process (workers
    = 1, with `engines`' backend) or in generate.workers processes, then every partial file merged."""
    out = ctx.round_dir(k)
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


def run_in_workers(ctx: RunContext, k: int, job: Job, todo: list[int]) -> None:
    """Deal the job's questions still to do to generate.workers processes, run them, and record the deal
    and the workers' receipts in the job's record."""
    from rationale_loop.phases.launch import check_generation_gpus, run_generation_workers, spans_machines

    gen, out = ctx.cfg.generate, ctx.round_dir(k)
    prompts = [ctx.fmt.prompt(p.question) for p in job.problems]
    units = seed_units(gen, job.checkpoint, prompts, job.sampling, job.batch_size, ctx.cfg.model.trust_remote_code)
    shards = deal(units, todo, gen.workers)
    idle = sum(1 for shard in shards if not shard)
    if idle:
        log.warning("round %d: %d of %d %s workers have nothing to do: the questions left fill %d seed unit(s) "
                    "(a smaller batch size for hf, generate.chunk_size for vllm, makes more)", k, idle, gen.workers, job.name, gen.workers - idle)
    record = {"workers": gen.workers, "backend": resolve_backend(gen), "gpus_per_worker": gpus_per_engine(gen), "seed_units": len(units),
              "shards": [[job.problems[i].id for i in shard] for shard in shards]}
    write_json_atomic(out / job.record, record)
    shutil.rmtree(out / RECEIPTS, ignore_errors=True)
    machines = ctx.cfg.launch.num_machines if spans_machines(ctx.cfg.launch) else 1
    gpus = check_generation_gpus(gen.workers, record["gpus_per_worker"], machines)
    run_generation_workers(gen.workers, ctx.dir, k, job.name, gpus, ctx.cfg.launch)
    receipts = []
    for rank in range(gen.workers):
        receipt = out / RECEIPTS / f"{job.name}-{rank}.json"
        if not receipt.exists():
            raise UserError(f"round {k}: {job.name} worker {rank} exited without writing {receipt}; the next call resumes")
        receipts.append(read_json(receipt))
    write_json_atomic(out / job.record, {**record, "receipts": receipts})
    shutil.rmtree(out / RECEIPTS)


def worker_share(ctx: RunContext, k: int, job: Job, rank: int, workers: int) -> None:
    """Worker `rank`'s share of the job, as its record deals it (sample_worker.py): its samples go to its
    own partial file, then its receipt is written. A worker dealt nothing loads no model."""
    out = ctx.round_dir(k)
    dealt = read_json(out / job.record)
    if dealt["workers"] != workers:
        raise UserError(f"{out / job.record} deals the questions to {dealt['workers']} workers, and {workers} were started")
    index_of = {p.id: i for i, p in enumerate(job.problems)}
    unknown = [q for q in dealt["shards"][rank] if q not in index_of]
    if unknown:
        raise DataError(f"{out / job.record} deals worker {rank} questions that are not the job's ({unknown[:3]})")
    mine = [index_of[q] for q in dealt["shards"][rank]]
    begun = time.perf_counter()
    if mine:
        with closing(ctx.make_backend(job.checkpoint, job.batch_size)) as backend:
            generate_into(ctx, backend, job, mine, partial_file(out, job, rank, workers))
    receipt = {"rank": rank, "machine": int(os.environ.get("GROUP_RANK", "0")), "questions": len(mine),
               "seconds": round(time.perf_counter() - begun, 2), "host": socket.gethostname(), "pid": os.getpid()}
    (out / RECEIPTS).mkdir(exist_ok=True)
    write_json_atomic(out / RECEIPTS / f"{job.name}-{rank}.json", receipt)
