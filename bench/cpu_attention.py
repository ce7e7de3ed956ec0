"""Our training stages under bf16 autocast on a CPU, with the attention in float32 (the default,
rationale_loop/training/attention.py) and in bf16 (the way before), side by side.

Same models, rows and settings as bench/against_trl.py (whose `ours` runs each stage); SFT packed (the
shipped setting) and padded, and the rank stage; medians of --repeats interleaved runs. Usage:

    .venv-bench/bin/python bench/cpu_attention.py --repeats 3                    # the two random-weight shapes
    .venv-bench/bin/python bench/cpu_attention.py --model smollm2 --steps 4      # the real model
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import against_trl  # noqa: E402
from training_stages import machine_description  # noqa: E402

from rationale_loop.training import attention  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STAGES = {"sft packed": ("sft", {"packing": True}), "sft padded": ("sft", {"packing": False}), "rank": ("rank", {"packing": True})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["shapes", "smollm2"], default="shapes")
    parser.add_argument("--steps", type=int, default=30, help="steps a stage (the larger random shape runs a third)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="default: bench/results/cpu_attention[_smollm2].json")
    args = parser.parse_args()
    args.peft = "none"
    torch.set_num_threads(args.threads)
    shapes, sft, rank, tokenizer = against_trl.shapes_and_rows(args)
    logging.disable(logging.WARNING)
    float32_dtypes, results = attention.HALF_DTYPES, {}
    for shape_name, (layers, hidden, share, folder) in shapes.items():
        steps = max(1, round(args.steps * share))
        for stage_name, (stage, settings) in STAGES.items():
            items = sft[: steps * against_trl.SFT_BATCH] if stage == "sft" else rank[: steps * against_trl.RANK_BATCH]
            times: dict[str, list[float]] = {"float32": [], "bf16": []}
            for _ in range(args.repeats):  # interleaved: machine noise hits both alike
                for variant in times:
                    # The half-precision dtypes that attend in float32: none gives the bf16 attention of before.
                    attention.HALF_DTYPES = float32_dtypes if variant == "float32" else ()
                    times[variant].append(against_trl.ours(stage, items, tokenizer, (layers, hidden, folder), steps, True,
                                                           {**settings, "loss_chunk_tokens": -1}))
            attention.HALF_DTYPES = float32_dtypes
            medians = {variant: statistics.median(seconds) for variant, seconds in times.items()}
            row = {"steps": steps, **{f"{v}_attention_s": [round(s, 3) for s in seconds] for v, seconds in times.items()},
                   "speedup": round(medians["bf16"] / medians["float32"], 3)}
            results[f"{shape_name} {stage_name}"] = row
            print(f"{shape_name} {stage_name}: float32 attention {medians['float32']:.2f} s, bf16 {medians['bf16']:.2f} s, "
                  f"{row['speedup']:.2f}x", flush=True)
    out = args.out or RESULTS / f"cpu_attention{'_smollm2' if args.model == 'smollm2' else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_description(args.threads), "model": args.model, "repeats": args.repeats,
                               "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
