"""Where the hf backend's sampling time goes on a real model, and what a continuous batch could buy.

Two measurements in one run, on the same model, precision and threads:

  (a) a decode step's throughput by batch rows: R rows of one prompt's cache (the prompts' median length),
      reserved as the loop reserves it, each step a forward of one token a row plus the draw
      (generate/decode.py's own functions), timed over --steps steps, for R in --rows; and the draw alone,
      its candidates picked a few rows at a time (the loop's way) and for the whole batch at once;
  (b) the default loop on the experiment's pool prompts (bench/generation.py's real-model setting),
      timed by part: the prompts' pass (generate/decode.py's _read_prompts) and the decode steps, with the
      rows each step carried.

From them, a ceiling: the run's time were every decode step as fast per row as the best R of (a), with the
prompts' pass unchanged. That is the most a continuous batch (freed rows refilled with the next prompts'
samples) can buy; the share of the matmul peak it would reach is the number to hold against the issue's
goal (generated-token FLOPs, 2 x parameters x tokens/s, over the bf16 peak).

    .venv/bin/python bench/decode_steps.py --experiment smollm2_svamp --data-dir DIR --checkpoint SFT \
        [--questions 64] [--rows 8,16,32,64,128,256] [--steps 24] [--repeats 3] [--dtype bfloat16]
    # writes bench/results/decode_steps_<experiment>.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from unittest.mock import patch

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from generation import checkpoint_label, experiment_setting, machine, parameter_count, run_hf  # noqa: E402
from training_stages import matmul_peak  # noqa: E402

from rationale_loop.generate import decode  # noqa: E402
from rationale_loop.generate.hf import encode_prompts  # noqa: E402
from rationale_loop.models.model import load_model, load_tokenizer  # noqa: E402


@torch.inference_mode()
def step_seconds(model, prompt: list[int], rows: int, steps: int, sampling) -> tuple[float, dict[str, float]]:
    """Seconds per decode step at `rows` rows: the prompt read once, its cache repeated to `rows` rows and
    reserved for the prompt plus `steps` tokens, then `steps` steps of a forward and a draw, no row leaving;
    and the draw alone on the last step's logits (median of 5), its candidates picked CANDIDATE_ROWS rows at
    a time (the loop's way) and the whole batch at once (the way before)."""
    with decode.decode_attention(model):
        _, step_options, (logits, mask, position) = decode.start_batch(model, [prompt], rows, 0, steps)
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for _ in range(steps):
            tokens = decode.pick_tokens(logits, sampling.temperature, sampling.top_p, generator)
            logits, mask, position = decode.decode_step(model, tokens, mask, position, step_options)
        step = (time.perf_counter() - start) / steps
    draws = {}
    for name, rows_at_once in (("draw_s", decode.CANDIDATE_ROWS), ("draw_whole_batch_s", 1 << 30)):
        with patch.object(decode, "CANDIDATE_ROWS", rows_at_once):
            times = []
            for _ in range(5):
                start = time.perf_counter()
                decode.pick_tokens(logits, sampling.temperature, sampling.top_p, torch.Generator().manual_seed(0))
                times.append(time.perf_counter() - start)
        draws[name] = statistics.median(times)
    return step, draws


def timed_run(model, tokenizer, prompts, sampling, batch_size) -> dict:
    """The default loop on the prompts, its time split into the prompts' pass and the rest (decode steps, draws,
    stop checks), and how many rows each step carried (one draw per step, over the step's live rows)."""
    prompt_seconds, rows_per_step = [], Counter()
    read_prompts, pick_tokens = decode._read_prompts, decode.pick_tokens

    def timed_read(*args, **kwargs):
        start = time.perf_counter()
        try:
            return read_prompts(*args, **kwargs)
        finally:
            prompt_seconds.append(time.perf_counter() - start)

    def counted_pick(logits, *args, **kwargs):
        rows_per_step[logits.shape[0]] += 1
        return pick_tokens(logits, *args, **kwargs)

    with patch.multiple(decode, _read_prompts=timed_read, pick_tokens=counted_pick):
        tokens, seconds = run_hf(model, tokenizer, prompts, sampling, batch_size)
    prompt_tokens = sum(len(ids) for ids in encode_prompts(tokenizer, prompts, sampling))
    steps = sum(rows_per_step.values())
    return {"generated_tokens": tokens, "seconds": seconds, "prompt_pass_s": sum(prompt_seconds), "prompt_tokens": prompt_tokens,
            "decode_s": seconds - sum(prompt_seconds), "decode_steps": steps,
            "mean_rows_per_step": sum(r * c for r, c in rows_per_step.items()) / max(steps, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="smollm2_svamp")
    parser.add_argument("--data-dir", help="the experiment's data folder (task.data_dir)")
    parser.add_argument("--checkpoint", help="default: the experiment's base model")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--rows", default="8,16,32,64,128,256")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out")
    args = parser.parse_args()

    checkpoint, prompts, sampling, batch_size = experiment_setting(args)
    tokenizer = load_tokenizer(checkpoint)
    model = load_model(checkpoint, args.dtype).eval()
    parameters = parameter_count(checkpoint)
    peak = matmul_peak(getattr(torch, args.dtype)) / 1e9  # GFLOP/s
    encoded = sorted(encode_prompts(tokenizer, prompts, sampling), key=len)
    median_prompt = encoded[len(encoded) // 2]
    rows = [int(r) for r in args.rows.split(",")]

    def share(tokens_per_s: float) -> float:
        return 2 * parameters * tokens_per_s / 1e9 / peak

    step_runs, run_runs = {r: [] for r in rows}, []
    for _ in range(args.repeats):  # interleaved: this machine is shared, and drifts
        for r in rows:
            step_runs[r].append(step_seconds(model, median_prompt, r, args.steps, sampling))
        run_runs.append(timed_run(model, tokenizer, prompts, sampling, batch_size))
    steps = {}
    for r, runs in step_runs.items():
        seconds = statistics.median(step for step, _ in runs)
        steps[str(r)] = {"step_s": seconds, "tokens_per_s": r / seconds, "share_of_matmul_peak": share(r / seconds),
                         **{name: statistics.median(draws[name] for _, draws in runs) for name in runs[0][1]}}
    run = {key: statistics.median(run[key] for run in run_runs) for key in run_runs[0]}
    run["tokens_per_s"] = run["generated_tokens"] / run["seconds"]
    run["share_of_matmul_peak"] = share(run["tokens_per_s"])
    best_rows = max(steps, key=lambda r: steps[r]["tokens_per_s"])
    ceiling_s = run["prompt_pass_s"] + run["generated_tokens"] / steps[best_rows]["tokens_per_s"]
    ceiling = {"rows": int(best_rows), "seconds": ceiling_s, "tokens_per_s": run["generated_tokens"] / ceiling_s,
               "share_of_matmul_peak": share(run["generated_tokens"] / ceiling_s),
               "speedup_over_default": run["seconds"] / ceiling_s}
    result = {"machine": {**machine(), "matmul_peak_gflops": {args.dtype: peak}},
              "settings": {"experiment": args.experiment, "checkpoint": checkpoint_label(checkpoint), "parameters": parameters,
                           "dtype": args.dtype, "questions": len(prompts), "n": sampling.n, "max_new_tokens": sampling.max_new_tokens,
                           "batch_size": batch_size, "median_prompt_tokens": len(median_prompt), "steps": args.steps,
                           "repeats": args.repeats},
              "decode_step_by_rows": steps, "default_loop": run, "ceiling_every_step_at_best_rows": ceiling}
    out = Path(args.out or ROOT / f"bench/results/decode_steps_{args.experiment}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.dtype} matmul peak {peak:.0f} GFLOP/s; {parameters / 1e6:.1f}M parameters; median prompt {len(median_prompt)} tokens")
    print(f"{'rows':>6}{'step ms':>10}{'tokens/s':>10}{'share':>8}{'draw ms':>10}{'draw ms, whole batch':>22}")
    for r, row in steps.items():
        print(f"{r:>6}{row['step_s'] * 1e3:>10.1f}{row['tokens_per_s']:>10.0f}{row['share_of_matmul_peak']:>8.1%}"
              f"{row['draw_s'] * 1e3:>10.1f}{row['draw_whole_batch_s'] * 1e3:>22.1f}")
    print(f"default loop: {run['generated_tokens']:.0f} tokens in {run['seconds']:.1f} s ({run['tokens_per_s']:.0f} tok/s, "
          f"{run['share_of_matmul_peak']:.1%}); prompts' pass {run['prompt_pass_s']:.1f} s, decode {run['decode_s']:.1f} s over "
          f"{run['decode_steps']:.0f} steps of {run['mean_rows_per_step']:.0f} rows on average")
    print(f"ceiling (every step at {best_rows} rows' rate): {ceiling_s:.1f} s, {ceiling['tokens_per_s']:.0f} tok/s, "
          f"{ceiling['share_of_matmul_peak']:.1%} of the peak, {ceiling['speedup_over_default']:.2f}x the default")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
