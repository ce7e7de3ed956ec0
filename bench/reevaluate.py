"""Finished rounds asked questions their runs never evaluated: a second held-out set, for results whose
first set is too small to tell arms apart (docs/learning.md, the SmolLM2 runs: 150 questions, SE ~0.03).

Each round's checkpoint is loaded as the run itself would load it (its round's config.yaml: model, prompt
format, backend, stop strings) and asked the task's questions from `--eval-start` on (`--eval-size` of them),
greedy, judged by the run's own checker, with the arithmetic chain counted (the answer alone decides, as in
the tables). Rounds that several runs share (a fork's round 0) are asked once. Nothing inside a run is
written: a finished round is never rewritten; the samples go to `--samples DIR`.

Per round: accuracy ± SE on the new questions, and pooled with the run's own eval.jsonl (the two sets are
disjoint). With `--against RUN`, every other run's rounds are compared with that run's same round on the
same questions, pooled (`--compare RUN:BASE` names one pair): the mean of the paired differences and its
standard error sd(d)/sqrt(n), smaller than the unpaired one because both arms answer the same questions.
Every round is also compared so with its own run's round 0 (the SFT checkpoint it started from).
Samples already in `--samples` from an earlier call are read back, not asked again.

    python bench/reevaluate.py RUN_DIR... --eval-start 850 --eval-size 150 [--against NAME] [--compare A:B] \\
        --samples DIR [--data-dir DIR] [--out bench/results/reevaluated.json]

Run it from the folder the runs were made in (a run's saved model cache path may be relative to it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from training_stages import machine_description  # noqa: E402

from rationale_loop.judging.evaluate import evaluate  # noqa: E402
from rationale_loop.phases.context import RunContext  # noqa: E402
from rationale_loop.run.records import read_jsonl  # noqa: E402


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return list(read_jsonl(path)) if path.exists() else []


def _answer_right(row: dict[str, Any]) -> bool:
    """Whether the answer is right, whatever the run's verify.chain (a chain=check run marks a right answer
    reached by a wrong step incorrect; its chain record still says the answer was right)."""
    chain = row.get("chain")
    return bool(chain["answer_correct"]) if chain and "answer_correct" in chain else bool(row["correct"])


def _finished_rounds(run: Path) -> list[int]:
    rounds, k = [], 0
    while (run / f"round_{k:02d}" / "DONE").exists():
        rounds.append(k)
        k += 1
    return rounds


def ask(run: Path, k: int, start: int, size: int, data_dir: str | None, samples: Path) -> list[dict[str, Any]]:
    """Round k's checkpoint asked the questions [start, start + size) of the run's eval file: one record
    per question (id, answer right); a question too long for the model's context counts as a miss."""
    folder = run / f"round_{k:02d}"
    cfg = OmegaConf.load(folder / "config.yaml")
    cfg.output_root, cfg.run, cfg.init_from = str(run.parent), run.name, None
    cfg.task.files.eval.start, cfg.task.eval_size, cfg.verify.chain = start, size, "count"
    if data_dir:
        cfg.task.data_dir = data_dir
    ctx = RunContext(cfg)
    checkpoint = folder / "checkpoint"
    problems, too_long = ctx.fitting(ctx.splits.eval, cfg.eval.max_new_tokens, checkpoint, "evaluation")
    path = samples / run.name / f"round_{k:02d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(_jsonl(path)) != len(problems):  # a finished earlier call's samples are read back, not asked again
        backend = ctx.make_backend(checkpoint, cfg.eval.batch_size)
        try:
            evaluate(backend, problems, ctx.fmt, cfg.verify.kind, cfg.eval.max_new_tokens, path, stop=ctx.stop(), chain="count")
        finally:
            backend.close()
    return [{"id": r["question_id"], "right": _answer_right(r)} for r in _jsonl(path)] + [
        {"id": f"too-long-{i}", "right": False} for i in range(too_long)]


def accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    p = sum(r["right"] for r in rows) / n if n else 0.0
    return {"accuracy": round(p, 4), "se": round(math.sqrt(p * (1 - p) / n), 4) if n else None, "questions": n}


def paired(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of the per-question differences (ours - theirs) over the questions both answered, and its SE."""
    mine = {r["id"]: int(r["right"]) for r in ours}
    other = {r["id"]: int(r["right"]) for r in theirs}
    shared = sorted(mine.keys() & other.keys())
    d = [mine[q] - other[q] for q in shared]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    return {"difference": round(mean, 4), "se": round(sd / math.sqrt(n), 4), "questions": n,
            "in_se": round(mean / (sd / math.sqrt(n)), 2) if sd else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--eval-start", type=int, required=True)
    parser.add_argument("--eval-size", type=int, required=True)
    parser.add_argument("--against", help="the run the others are compared with, round by round (its folder name)")
    parser.add_argument("--compare", action="append", default=[], metavar="RUN:BASE",
                        help="one run against another, round by round (folder names); repeatable")
    parser.add_argument("--data-dir")
    parser.add_argument("--samples", type=Path, required=True, help="where each round's new samples are written")
    parser.add_argument("--out", type=Path, default=Path("bench/results/reevaluated.json"))
    args = parser.parse_args()

    asked: dict[str, list[dict[str, Any]]] = {}  # a checkpoint's real path -> its answers (a fork shares round 0)
    result: dict[str, Any] = {"machine": {**machine_description(torch.get_num_threads()), "cores": os.cpu_count()},
                              "eval_start": args.eval_start, "eval_size": args.eval_size, "runs": {}}
    per_round: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for run in args.runs:
        rows = []
        for k in _finished_rounds(run):
            key = str((run / f"round_{k:02d}" / "checkpoint").resolve())
            started = time.perf_counter()
            if key not in asked:
                asked[key] = ask(run, k, args.eval_start, args.eval_size, args.data_dir, args.samples)
            own = [{"id": r["question_id"], "right": _answer_right(r)} for r in _jsonl(run / f"round_{k:02d}" / "eval.jsonl")]
            pooled = own + asked[key]
            per_round.setdefault(run.name, {})[k] = pooled
            rows.append({"round": k, "new": accuracy(asked[key]), "own": accuracy(own), "pooled": accuracy(pooled),
                         "seconds": round(time.perf_counter() - started, 1)})
            print(f"{run.name} round {k}: new {rows[-1]['new']}, own {rows[-1]['own']}, pooled {rows[-1]['pooled']}", flush=True)
        result["runs"][run.name] = rows
    # Every round against its run's SFT checkpoint (round 0), on the same questions: what the rounds added.
    result["vs_sft"] = {name: {k: paired(rounds[k], rounds[0]) for k in rounds if k > 0} for name, rounds in per_round.items() if 0 in rounds}
    for name, table in result["vs_sft"].items():
        print(f"{name} - its round 0: " + ", ".join(f"round {k} {row['difference']:+.3f} ± {row['se']:.3f}" for k, row in table.items()))
    pairs = [(name, args.against) for name in per_round if args.against and name != args.against]
    pairs += [tuple(spec.split(":", 1)) for spec in args.compare]
    result["paired"] = {}
    for name, base in pairs:
        table = {k: paired(per_round[name][k], per_round[base][k]) for k in per_round[name] if k in per_round[base] and k > 0}
        result["paired"][f"{name} - {base}"] = table
        for k, row in table.items():
            print(f"{name} - {base}, round {k}: {row}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
