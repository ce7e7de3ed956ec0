"""The sample phase: round k's starting model answers every question of the pool generate.n times, each
answer judged (rationale_loop/rollouts.py); the output is generations.jsonl.

With generate.workers=N > 1 the pool is shared by N processes under `accelerate launch`
(rationale_loop/sample_worker.py, one engine each): this process deals the prompts in whole seed units
(generate/shards.py) and writes the deal to sample_workers.json; worker r appends its judged samples to its
own partial file; this process merges them and adds each worker's receipt (questions, seconds, host) to
sample_workers.json. Either way a question's samples are appended as soon as they are judged, a resumed call
keeps every complete question of every partial file (however many workers wrote them), and generations.jsonl
appears, sorted by question and sample, only when the whole pool is done: the same bytes for any number of
workers."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Collection

from rationale_loop.errors import DataError, UserError
from rationale_loop.faults import crash_point
from rationale_loop.generate import gpus_per_engine, resolve_backend, seed_units
from rationale_loop.generate.shards import deal
from rationale_loop.objectives import OBJECTIVES
from rationale_loop.phases.context import Engines, RunContext
from rationale_loop.records import Problem, append_jsonl, read_json, sort_jsonl, write_json_atomic, write_jsonl_atomic
from rationale_loop.rollouts import sample_and_judge
from rationale_loop.rundir import keep_complete_questions

log = logging.getLogger(__name__)
OUTPUT = "generations.jsonl"
WORKERS_RECORD = "sample_workers.json"  # the deal of a sampling in workers, then each worker's receipt
RECEIPTS = ".sample_receipts"  # each worker's receipt while they run (a dot folder: a leftover of a kill)


def partial_file(out: Path, rank: int | None = None, workers: int = 1) -> Path:
    """Where samples are appended as they come: one file in process, one per worker otherwise."""
    return out / (f"{OUTPUT}.partial" if rank is None else f"{OUTPUT}.partial.worker-{rank}-of-{workers}")


def pool_that_fits(ctx: RunContext, k: int) -> tuple[list[Problem], int]:
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
        log.info("round %d: sampling %d x %d completions from %s", k, len(pool), ctx.cfg.generate.n, ctx.start_checkpoint(k))
        _sample_pool(ctx, k, engines, pool)
    else:  # the file contract holds, with nothing in it
        log.info("round %d: objective %s uses no samples; the pool is not sampled", k, ctx.cfg.objective.name)
        write_jsonl_atomic(out / OUTPUT, [])
    crash_point("generated")


def _sample_pool(ctx: RunContext, k: int, engines: Engines, pool: list[Problem]) -> None:
    out = ctx.round_dir(k)
    n = ctx.cfg.generate.n
    done = _complete_so_far(out, n, {p.id for p in pool})
    todo = [i for i, problem in enumerate(pool) if problem.id not in done]
    if done:
        log.info("resuming generation: %d of %d questions were already sampled", len(done), len(pool))
    if todo and ctx.cfg.generate.workers > 1:
        engines.close()  # each worker loads its own engine; the memory this one holds is theirs
        _sample_in_workers(ctx, k, pool, todo)
    elif todo:
        backend = engines.get(ctx.start_checkpoint(k), ctx.cfg.generate.batch_size)
        sample_into(ctx, k, backend, pool, todo, partial_file(out))
    missing = [p.id for p in pool if p.id not in _complete_so_far(out, n, {p.id for p in pool})]
    if missing:
        raise UserError(f"round {k}: {len(missing)} question(s) of the pool have no complete samples after sampling "
                        f"({', '.join(missing[:3])}); the next call samples them")
    partials = sorted(out.glob(f"{OUTPUT}.partial*"))
    sort_jsonl(partials, out / OUTPUT, key=lambda row: (row["question_id"], row["sample_index"]))
    for partial in partials:
        partial.unlink()


def sample_into(ctx: RunContext, k: int, backend: Any, pool: list[Problem], wanted: Collection[int], target: Path) -> None:
    """Sample and judge the questions of `pool` at the indices `wanted`, appending each question's samples
    to `target` as they come, so a crash loses at most the batch in flight. The backend is given the whole
    pool with the rest skipped: it batches and seeds as for the whole pool."""
    wanted = set(wanted)
    skip = {i for i in range(len(pool)) if i not in wanted}
    sampling = ctx.sampling(k)
    for group in sample_and_judge(backend, pool, ctx.fmt, sampling, ctx.cfg.verify.kind, skip=skip, chain=ctx.cfg.verify.chain):
        append_jsonl(target, group)
        crash_point("generate")


def _complete_so_far(out: Path, n: int, pool_ids: set[str]) -> set[str]:
    """The questions with all n samples in the round's partial files (each trimmed to those, as a kill may
    have cut one mid-write); a file holding a question not in the pool is refused, naming it."""
    done: set[str] = set()
    for partial in sorted(out.glob(f"{OUTPUT}.partial*")):
        complete = keep_complete_questions(partial, n)
        unknown = sorted(complete - pool_ids)
        if unknown:
            raise DataError(f"{partial} holds samples of questions that are not in the pool now ({unknown[:3]}...): "
                            "the task's data changed since the round started; restore it, or delete the file to sample again")
        done |= complete
    return done


def _sample_in_workers(ctx: RunContext, k: int, pool: list[Problem], todo: list[int]) -> None:
    """Deal the questions still to sample to generate.workers processes, run them, and record the deal and
    the workers' receipts in sample_workers.json."""
    from rationale_loop.launch import check_generation_gpus, run_generation_workers, spans_machines

    gen, out = ctx.cfg.generate, ctx.round_dir(k)
    prompts = [ctx.fmt.prompt(p.question) for p in pool]
    units = seed_units(gen, ctx.start_checkpoint(k), prompts, ctx.sampling(k), gen.batch_size, ctx.cfg.model.trust_remote_code)
    shards = deal(units, todo, gen.workers)
    idle = sum(1 for shard in shards if not shard)
    if idle:
        log.warning("round %d: %d of %d sampling workers have nothing to do: the questions left fill %d seed unit(s) "
                    "(a smaller generate.batch_size for hf, generate.chunk_size for vllm, makes more)",
                    k, idle, gen.workers, gen.workers - idle)
    record = {"workers": gen.workers, "backend": resolve_backend(gen), "gpus_per_worker": gpus_per_engine(gen), "seed_units": len(units),
              "shards": [[pool[i].id for i in shard] for shard in shards]}
    write_json_atomic(out / WORKERS_RECORD, record)
    shutil.rmtree(out / RECEIPTS, ignore_errors=True)
    launch = ctx.cfg.launch
    machines = launch.num_machines if spans_machines(launch) else 1
    gpus = check_generation_gpus(gen.workers, record["gpus_per_worker"], machines)
    run_generation_workers(gen.workers, ctx.dir, k, gpus, launch)
    receipts = []
    for rank in range(gen.workers):
        receipt = out / RECEIPTS / f"worker-{rank}.json"
        if not receipt.exists():
            raise UserError(f"round {k}: sampling worker {rank} exited without writing {receipt}; the next call resumes")
        receipts.append(read_json(receipt))
    write_json_atomic(out / WORKERS_RECORD, {**record, "receipts": receipts})
    shutil.rmtree(out / RECEIPTS)


def sample_share(ctx: RunContext, k: int, rank: int, workers: int) -> None:
    """Worker `rank`'s share of round k's sampling, as sample_workers.json deals it (sample_worker.py): its
    samples go to its own partial file, then its receipt is written. A worker dealt nothing loads no model."""
    out = ctx.round_dir(k)
    deal_record = read_json(out / WORKERS_RECORD)
    if deal_record["workers"] != workers:
        raise UserError(f"{out / WORKERS_RECORD} deals the pool to {deal_record['workers']} workers, and {workers} were started")
    pool, _ = pool_that_fits(ctx, k)
    index_of = {p.id: i for i, p in enumerate(pool)}
    unknown = [q for q in deal_record["shards"][rank] if q not in index_of]
    if unknown:
        raise DataError(f"{out / WORKERS_RECORD} deals worker {rank} questions that are not in the pool ({unknown[:3]})")
    mine = [index_of[q] for q in deal_record["shards"][rank]]
    begun = time.perf_counter()
    if mine:
        with closing(ctx.make_backend(ctx.start_checkpoint(k), ctx.cfg.generate.batch_size)) as backend:
            sample_into(ctx, k, backend, pool, mine, partial_file(out, rank, workers))
    receipt = {"rank": rank, "machine": int(os.environ.get("GROUP_RANK", "0")), "questions": len(mine),
               "seconds": round(time.perf_counter() - begun, 2), "host": socket.gethostname(), "pid": os.getpid()}
    (out / RECEIPTS).mkdir(exist_ok=True)
    write_json_atomic(out / RECEIPTS / f"worker-{rank}.json", receipt)
