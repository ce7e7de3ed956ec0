"""AdamW's step time with torch's three kernels, side by side in one run: the per-tensor loop (what torch
picks on a CPU when told nothing), foreach (tensors in groups) and fused (one kernel; what
rationale_loop/training/optim.py picks by default). Parameter sets: the embedded default's model (full
finetuning), SmolLM2-135M's shape with random weights (full finetuning) and a LoRA adapter on it (rank 16
on every projection, the trainable set of `peft=lora`). Gradients are random and fixed; each timed call is
one `optimizer.step()`, after warm-up steps. Medians of --repeats rounds, the kernels interleaved within a
round. Usage:

    .venv/bin/python bench/optimizer.py [--steps 10] [--repeats 3] [--threads 2]

Writes bench/results/optimizer.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from training_stages import machine_description

RESULTS = Path(__file__).resolve().parent / "results" / "optimizer.json"
KERNELS = {"per-tensor loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def shapes(name: str) -> list[tuple[int, ...]]:
    """The trainable tensors' shapes of a parameter set (weights only: their count, not their values, matters)."""
    if name == "embedded default":  # conf/model/tiny_llama.yaml: 4 layers, hidden 128, 4 heads, vocab 384
        hidden, inter, layers, vocab, kv = 128, 384, 4, 384, 128
    else:  # SmolLM2-135M: 30 layers, hidden 576, 9 heads / 3 kv heads of 64, vocab 49,152, tied embeddings
        hidden, inter, layers, vocab, kv = 576, 1536, 30, 49152, 192
    if name == "SmolLM2-135M LoRA r16":
        rank, out = 16, []
        for _ in range(layers):
            for rows, cols in ((hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (inter, hidden), (inter, hidden), (hidden, inter)):
                out += [(rank, cols), (rows, rank)]
        return out
    layer = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (inter, hidden), (inter, hidden), (hidden, inter), (hidden,), (hidden,)]
    return [(vocab, hidden), *layer * layers, (hidden,)]


def step_seconds(params: list[torch.Tensor], kernel: dict, steps: int) -> float:
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, **kernel)
    for _ in range(2):  # the moments are allocated on the first step
        optimizer.step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in ("embedded default", "SmolLM2-135M LoRA r16", "SmolLM2-135M"):
        params = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes(name)]
        for p in params:
            p.grad = torch.randn_like(p)
        seconds: dict[str, list[float]] = {kernel: [] for kernel in KERNELS}
        for _ in range(args.repeats):
            for kernel, options in KERNELS.items():
                seconds[kernel].append(step_seconds(params, options, args.steps))
        count = sum(p.numel() for p in params)
        loop = statistics.median(seconds["per-tensor loop"])
        for kernel in KERNELS:
            median = statistics.median(seconds[kernel])
            rows.append({"parameters": name, "entries": count, "tensors": len(params), "kernel": kernel,
                         "step_ms": round(1000 * median, 2), "speedup_over_loop": round(loop / median, 2),
                         "runs_ms": [round(1000 * s, 2) for s in seconds[kernel]]})
    result = {"machine": machine_description(args.threads), "steps": args.steps, "repeats": args.repeats, "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'parameters':24} {'entries':>12} {'kernel':16} {'step ms':>9} {'x loop':>7}")
    for row in rows:
        print(f"{row['parameters']:24} {row['entries']:>12,} {row['kernel']:16} {row['step_ms']:>9.2f} {row['speedup_over_loop']:>7.2f}")


if __name__ == "__main__":
    main()
