"""The real-model learning table (docs/learning.md): runs of experiment=smollm2_svamp read back from their
run directories, one row per stage, the base model first.

The arms, run one after the other on a quiet machine (data_dir holds svamp/):

    python -m rationale_loop loop run=svamp_loop output_root=ROOT experiment=smollm2_svamp task.data_dir=DATA
    python -m rationale_loop loop run=svamp_sft output_root=ROOT init_from=ROOT/svamp_loop/round_0 \\
        objective=sft rank.batch_size=16 rank.micro_batch_size=8 rank.lr=3e-4
    python -m rationale_loop loop run=svamp_star output_root=ROOT init_from=ROOT/svamp_loop/round_0 \\
        objective=star rank.batch_size=16 rank.micro_batch_size=8 rank.lr=3e-4

The second continues SFT from the first's SFT checkpoint at equal compute: the same rounds and optimizer
steps, each step 16 sequences (a ranked pair is 2), at SFT's learning rate, on the SFT set's worked examples.
The third is STaR at the same compute and rate: each round's correct samples as SFT examples. Then:

    python bench/real_model.py ROOT/svamp_loop ROOT/svamp_sft ROOT/svamp_star [--out bench/results/real_model.json]

Per stage: held-out accuracy ± its standard error sqrt(p(1-p)/n), how many held-out answers were cut off by
the token limit, and for the rounds the pool's pass@n, valid and truncated samples, pairs, and the arithmetic
steps of the valid samples' rationales (checked exactly; a sample's answer alone decides its correctness).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
from collections import Counter
from pathlib import Path
from typing import Any


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    p = sum(r["correct"] for r in rows) / n if n else 0.0
    return {"accuracy": p, "se": math.sqrt(p * (1 - p) / n) if n else None, "questions": n,
            "truncated": sum(r.get("invalid_reason") == "truncated" for r in rows),
            "invalid": dict(Counter(r["invalid_reason"] for r in rows if r.get("invalid_reason")))}


def _pool(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from rationale_loop.judging.chain import check_chain

    if not rows:
        return {}
    questions = {r["question_id"] for r in rows}
    solved = {r["question_id"] for r in rows if r["correct"]}
    steps = wrong = right_answer_wrong_chain = 0
    for row in rows:
        if row["valid"]:
            chain = row.get("chain") or check_chain(row["rationale"] or "").as_record()
            steps += chain["checked"]
            wrong += chain["wrong"]
            right_answer_wrong_chain += bool(row["correct"] and chain["wrong"])
    return {"samples": len(rows), "valid": sum(r["valid"] for r in rows), "correct": sum(r["correct"] for r in rows),
            "truncated": sum(r.get("invalid_reason") == "truncated" for r in rows),
            "pass_at_n": len(solved) / len(questions), "steps_checked": steps, "steps_wrong": wrong,
            "right_answer_wrong_chain": right_answer_wrong_chain}


def stages(run: Path) -> list[dict[str, Any]]:
    run = Path(run)
    out = []
    base = _jsonl(run / "round_00" / "base_eval.jsonl")
    if base:
        out.append({"stage": "base", **_accuracy(base)})
    k = 0
    while (run / f"round_{k:02d}" / "DONE").exists():
        folder = run / f"round_{k:02d}"
        metrics = json.loads((folder / "metrics.json").read_text())
        row = {"stage": "SFT" if k == 0 else f"round {k}", **_accuracy(_jsonl(folder / "eval.jsonl")),
               "pairs": metrics.get("pairs"), "train_steps": metrics.get("train_steps"),
               "seconds": {key: value for key, value in metrics.items() if key.endswith("_seconds")}}
        row.update({f"pool_{key}": value for key, value in _pool(_jsonl(folder / "generations.jsonl")).items()})
        out.append(row)
        k += 1
    return out


def markdown(name: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"**{name}**", "", "| stage | held-out accuracy ± SE | cut off | pool pass@n | valid / samples | truncated | pairs | steps wrong / checked | right answer, wrong step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        pool = row.get("pool_samples")
        lines.append(f"| {row['stage']} | {row['accuracy']:.3f} ± {row['se']:.3f} (n={row['questions']}) | {row['truncated']} | "
                     + (f"{row['pool_pass_at_n']:.3f} | {row['pool_valid']} / {pool} | {row['pool_truncated']} | {row.get('pairs')} | "
                        f"{row['pool_steps_wrong']} / {row['pool_steps_checked']} | {row['pool_right_answer_wrong_chain']} |"
                        if pool else "- | - | - | - | - | - |"))
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench/results/real_model.json"))
    args = parser.parse_args()
    result = {"machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
              "runs": {run.name: stages(run) for run in args.runs}}
    for name, rows in result["runs"].items():
        print(markdown(name, rows), end="\n\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
