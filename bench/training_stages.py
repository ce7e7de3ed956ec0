"""Training throughput of the SFT and rank stages before and after this project's padding/row savings,
side by side in one run: sorting each step's batch by length (`sort_by_length`), reading the anchor off
the chosen row (`share_anchor`, when the anchor is the chosen response), and forwarding each pair's prompt
once with both responses behind it (`objective.share_prompt`).

The model is the embedded default's shape (4 layers, hidden 128) with random weights; items are
tiny_arith problems in TinyCoT (SFT: gold responses; rank: the gold response chosen, the same chain with a
wrong last step rejected, anchor = chosen as in the embedded memphis setting). Batch 32 in micro-batches
of 8. Tokens/s counts non-padding tokens of the rows a stage needs (for rank: chosen + rejected, the
useful work), so forwarding the anchor twice shows up as lost throughput. Medians of --repeats runs,
variants interleaved. Usage:

    .venv/bin/python bench/training_stages.py [--steps 20] [--repeats 3] [--threads 2]

Writes bench/results/training_stages.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rationale_loop.config.schema import ObjectiveConfig, TrainConfig
from rationale_loop.data.formats import TINYCOT
from rationale_loop.data.tiny_arith import ArithSpec, make_splits
from rationale_loop.data.encode import Encoder
from rationale_loop.models.model import train_tokenizer
from rationale_loop.training.objectives import RankItem, SFTItem, SupervisedObjective, build_objective
from rationale_loop.training.train import train

RESULTS = Path(__file__).resolve().parent / "results" / "training_stages.json"


def items_and_tokenizer(count: int):
    # 1-4 events: rows of unlike length, as a real SFT mix has.
    problems = make_splits(7, {"bench": count}, ArithSpec(min_steps=1, max_steps=4))["bench"]
    sft = [SFTItem(TINYCOT.prompt(p.question), TINYCOT.response(p.rationale, p.answer)) for p in problems]
    rank = []
    for p in problems:
        chosen = TINYCOT.response(p.rationale, p.answer)
        wrong = str(int(p.answer) + 1)
        rejected = TINYCOT.response(p.rationale.rsplit("=", 1)[0] + f"= {wrong}.", wrong)
        rank.append(RankItem(TINYCOT.prompt(p.question), chosen, (rejected,), chosen))
    tokenizer = train_tokenizer([i.prompt + i.response for i in sft], vocab_size=384)
    return sft, rank, tokenizer


def model_for(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def useful_tokens(items, tokenizer, rank: bool) -> int:
    encoder = Encoder(tokenizer, 256)
    if not rank:
        return sum(len(encoder.encode(i.prompt, i.response).input_ids) for i in items)
    return sum(len(encoder.encode(i.prompt, i.chosen).input_ids) + len(encoder.encode(i.prompt, i.rejected[0]).input_ids) for i in items)


def run(stage: str, items, tokenizer, steps: int, sort: bool, share: bool, share_prompt: bool = False) -> dict:
    cfg = TrainConfig(lr=1e-4, steps=steps, batch_size=32, micro_batch_size=8, max_length=256, save_every=0, sort_by_length=sort)
    objective = SupervisedObjective() if stage == "sft" else build_objective(
        ObjectiveConfig(name="memphis", anchor="chosen", share_prompt=share_prompt))
    objective.share_anchor = share
    start = time.perf_counter()
    result = train(model_for(tokenizer), tokenizer, items, objective, cfg, seed=0, desc=stage)
    seconds = time.perf_counter() - start
    used = items[: steps * 32] if len(items) >= steps * 32 else items
    return {"seconds": seconds, "forwarded_tokens": result.tokens, "padding_fraction": result.padding_fraction,
            "useful_tokens": useful_tokens(used, tokenizer, stage == "rank")}


def machine_description(threads: int) -> dict:
    """The CPU model, its vector extensions, thread count and torch version (no host names or paths). Two
    machines both named "AMD EPYC" differed by avx512_bf16, which decides whether bf16 is fast or emulated."""
    machine = {"cpu": platform.processor() or platform.machine(), "threads": threads, "torch": torch.__version__}
    for line in (Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []):
        if line.startswith("model name"):
            machine["cpu"] = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            machine["vector_extensions"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
            break
    return machine


def matmul_peak(dtype: torch.dtype, device: str = "cpu", size: int = 2048, repeats: int = 20) -> float:
    """FLOP/s of one square matmul of `size` in `dtype`: the best of `repeats`. A peak, so the fastest run:
    the median of a few runs on a shared machine can land below what the measured stages themselves reach.
    Every benchmark's MFU or share of the peak divides by this one number."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sft, rank, tokenizer = items_and_tokenizer(args.steps * 32)
    variants = {
        "sft": {"drawn order": (False, True, False), "sorted": (True, True, False)},
        "rank": {"drawn order, anchor row": (False, False, False), "sorted, anchor row": (True, False, False),
                 "sorted, anchor from chosen": (True, True, False), "sorted, anchor from chosen, shared prompt": (True, True, True)},
    }
    samples: dict = {stage: {name: [] for name in names} for stage, names in variants.items()}
    for _ in range(args.repeats):  # interleaved, so machine noise hits every variant alike
        for stage, names in variants.items():
            for name, (sort, share, share_prompt) in names.items():
                samples[stage][name].append(run(stage, sft if stage == "sft" else rank, tokenizer, args.steps, sort, share, share_prompt))
    table = {}
    for stage, names in samples.items():
        for name, runs in names.items():
            seconds = statistics.median(r["seconds"] for r in runs)
            table[f"{stage}: {name}"] = {
                "median_seconds": round(seconds, 3),
                "useful_tokens_per_second": round(runs[0]["useful_tokens"] / seconds, 1),
                "padding_fraction": round(runs[0]["padding_fraction"], 4),
                "forwarded_tokens": runs[0]["forwarded_tokens"],
            }
    for stage, names in variants.items():
        first = table[f"{stage}: {next(iter(names))}"]["median_seconds"]
        for name in names:
            table[f"{stage}: {name}"]["speedup_vs_first"] = round(first / table[f"{stage}: {name}"]["median_seconds"], 3)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine_description(args.threads), "steps": args.steps, "repeats": args.repeats, "batch": 32, "micro_batch": 8,
                                   "results": table}, indent=2) + "\n")
    print(f"{'variant':42} {'median s':>9} {'useful tok/s':>13} {'padding':>8} {'speedup':>8}")
    for name, row in table.items():
        print(f"{name:42} {row['median_seconds']:9.2f} {row['useful_tokens_per_second']:13.0f} {row['padding_fraction']:8.3f} {row['speedup_vs_first']:8.2f}x")


if __name__ == "__main__":
    main()
