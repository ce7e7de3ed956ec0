"""Training and generation speed on a GPU, and what packing and the chunked loss buy, in one run.

On a machine with a CUDA GPU the model is Qwen2.5-0.5B's shape (conf/model/qwen2_5_0_5b_shape.yaml:
24 layers x 896, a 151,936-row tied head, bf16 weights, random) and the run reports, per stage:
  tokens/s    non-padding tokens of the rows a stage trains on (SFT: prompt + response; rank: chosen +
              rejected), per second of training loop (rationale_loop.training.train's own clock)
  MFU         model FLOPs per second over a bf16 matmul peak measured in the same run (a 4096^3 matmul,
              best of 20, before and after the stages); model FLOPs = 6 x (every linear layer's
              parameters, the head included) + 12 x layers x hidden x row length, per token
  peak memory torch.cuda.max_memory_allocated over the stage
and beside them a plain PyTorch loop on the same rows (padded micro-batches, the model's own mean loss,
AdamW), and greedy generation tokens/s (HF generate, a batch of prompts, every sequence to the limit).

Without a GPU it runs the embedded default's small shape (4 layers x 128, fp32) on the CPU, and once more
with a 32,000-row head (a Llama-2-sized vocabulary), where the logits, not the layers, are most of the
memory. Peak memory there is the peak resident memory of a fresh process over the stage, less its
resident memory before (each variant in its own process: the CPU allocator keeps no peak to reset).
Batches: 64 rows in micro-batches of 16 on a GPU, 16 in micro-batches of 8 on the CPU.

Variants, side by side: SFT padded (rows of a micro-batch padded to its longest, each step sorted by
length; and in the drawn order, sort_by_length=false), packed (sft.packing, a budget of micro_batch_size x the longest row, the padded path's worst
case), packed + chunked loss (loss_chunk_tokens); rank (memphis, anchor = chosen, shared prompt) plain
and chunked. Medians of --repeats runs (on the CPU, a variant's repeats run in its own process, one after another). Items are tiny_arith problems in TinyCoT
(bench/training_stages.py). Usage:

    .venv/bin/python bench/gpu.py [--steps 4] [--repeats 3] [--threads 2] [--cpu]

Writes bench/results/gpu.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training_stages import items_and_tokenizer, machine_description, matmul_peak, synchronize  # noqa: E402

from rationale_loop.config.schema import ModelConfig, ObjectiveConfig, TrainConfig  # noqa: E402
from rationale_loop.data.encode import Encoder  # noqa: E402
from rationale_loop.training.objectives import SupervisedObjective, build_objective  # noqa: E402
from rationale_loop.training.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
CHUNK = 1024  # loss_chunk_tokens of the chunked variants


def shapes(gpu: bool) -> dict[str, dict]:
    """name -> model settings (ModelConfig keys) for this machine."""
    from omegaconf import OmegaConf

    def load(name: str) -> dict:
        merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"))
        return OmegaConf.to_container(merged)

    if gpu:
        return {"qwen2.5-0.5b shape": load("qwen2_5_0_5b_shape")}
    small = load("tiny_llama")
    return {"embedded default (4 x 128)": small, "embedded default, 32k head": {**small, "model_vocab_size": 32000}}


def build_model(settings: dict, tokenizer, device: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[settings["architecture"]]
    config = config_class(
        vocab_size=max(len(tokenizer), settings["model_vocab_size"]), hidden_size=settings["hidden_size"],
        intermediate_size=settings["intermediate_size"], num_hidden_layers=settings["num_layers"],
        num_attention_heads=settings["num_heads"], num_key_value_heads=settings["num_kv_heads"] or settings["num_heads"],
        max_position_embeddings=max(settings["max_position_embeddings"], 512), rope_theta=settings["rope_theta"],
        tie_word_embeddings=settings["tie_embeddings"], pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[settings["dtype"]]
    with torch.device(device):  # built where it runs ("meta": shapes only, for counting FLOPs)
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def flops_per_token(model: torch.nn.Module, mean_length: float) -> float:
    """6 x the parameters of every linear layer (the head included, tied or not) + attention's
    12 x layers x hidden x row length."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    config = model.config
    return 6 * linear + 12 * config.num_hidden_layers * config.hidden_size * mean_length


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


VARIANTS = {
    # name -> (stage, TrainConfig settings)
    "sft padded": ("sft", {}),
    "sft padded, drawn order": ("sft", {"sort_by_length": False}),
    "sft packed": ("sft", {"packing": True}),
    "sft packed + chunked loss": ("sft", {"packing": True, "loss_chunk_tokens": CHUNK}),
    "sft padded + chunked loss": ("sft", {"loss_chunk_tokens": CHUNK}),
    "rank (shared prompt)": ("rank", {}),
    "rank (shared prompt) + chunked loss": ("rank", {"loss_chunk_tokens": CHUNK}),
}


def _peak_start(device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return rss_bytes()


def _peak_since(device: str, before: int) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() - before
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before  # Linux: KiB


def stage_run(shape: dict, variant: str, steps: int, batch: int, micro: int, device: str, threads: int, repeats: int) -> dict:
    """`repeats` training runs of a variant, each from fresh weights: their seconds, and the tokens and
    peak memory (bytes over the start) of the runs."""
    torch.set_num_threads(threads)
    stage, settings = VARIANTS[variant]
    sft, rank, tokenizer = items_and_tokenizer(steps * batch)
    items = sft if stage == "sft" else rank
    encoder = Encoder(tokenizer, 512)
    lengths = [len(encoder.encode(i.prompt, i.response).input_ids) for i in sft]
    if settings.get("packing"):
        settings = {**settings, "micro_batch_tokens": micro * max(lengths)}
    objective = SupervisedObjective() if stage == "sft" else build_objective(ObjectiveConfig(name="memphis", anchor="chosen"))
    cfg = TrainConfig(lr=1e-5, steps=steps, batch_size=batch, micro_batch_size=micro, max_length=512, save_every=0,
                      warmup_ratio=0.0, **settings)
    seconds, peak = [], 0
    for _ in range(repeats):
        model = build_model(shape, tokenizer, device)
        before = _peak_start(device)
        result = train(model, tokenizer, items, objective, cfg, seed=0, desc=variant)
        peak = max(peak, _peak_since(device, before))
        seconds.append(result.seconds)
        del model
    return {"seconds": seconds, "tokens": result.tokens, "peak_bytes": peak, "padding_fraction": result.padding_fraction,
            "flops_per_token": flops_per_token(build_model(shape, tokenizer, "meta"), statistics.mean(lengths))}


def plain_loop(shape: dict, steps: int, batch: int, micro: int, device: str, threads: int, repeats: int) -> dict:
    """SFT by hand on the same rows: padded micro-batches in the drawn order, the model's own mean loss,
    AdamW; no accounting, no checks."""
    torch.set_num_threads(threads)
    sft, _, tokenizer = items_and_tokenizer(steps * batch)
    encoder = Encoder(tokenizer, 512)
    encoded = [encoder.encode(i.prompt, i.response) for i in sft]
    seconds, peak = [], 0
    for _ in range(repeats):
        model = build_model(shape, tokenizer, device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        model.train()
        before = _peak_start(device)
        tokens = forwarded = 0
        start = time.perf_counter()
        for step in range(steps):
            rows = encoded[step * batch : (step + 1) * batch]
            for j in range(0, len(rows), micro):
                micro_batch = {k: v.to(device) for k, v in encoder.collate(rows[j : j + micro]).items()}
                loss = model(**micro_batch).loss * len(rows[j : j + micro]) / len(rows)
                loss.backward()
                tokens += int(micro_batch["attention_mask"].sum())
                forwarded += micro_batch["attention_mask"].numel()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        peak = max(peak, _peak_since(device, before))
        del model, optimizer
    return {"seconds": seconds, "tokens": tokens, "peak_bytes": peak, "padding_fraction": 1 - tokens / forwarded}


@torch.no_grad()
def generation(shape: dict, device: str, threads: int, prompts: int, new_tokens: int) -> dict:
    """Greedy HF generate on a batch of prompts, every sequence to new_tokens (EOS ignored)."""
    torch.set_num_threads(threads)
    sft, _, tokenizer = items_and_tokenizer(prompts)
    model = build_model(shape, tokenizer, device).eval()
    tokenizer.padding_side = "left"
    batch = tokenizer([i.prompt for i in sft[:prompts]], return_tensors="pt", padding=True).to(device)
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    model.generate(**batch, **{**settings, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    synchronize(device)
    start = time.perf_counter()
    out = model.generate(**batch, **settings)
    synchronize(device)
    seconds = time.perf_counter() - start
    generated = (out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]
    return {"seconds": seconds, "tokens": generated}


def _in_child(queue, function, args):
    queue.put(function(*args))


def measured(function, args, device: str) -> dict:
    """On the CPU in a fresh process (its own peak resident memory); on the GPU in this one."""
    if device == "cuda":
        return function(*args)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_in_child, args=(queue, function, args))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu", action="store_true", help="the CPU's small shapes even where a GPU is visible")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available() and not args.cpu
    device = "cuda" if gpu else "cpu"
    batch, micro = (64, 16) if gpu else (16, 8)
    peak_dtype = torch.bfloat16 if gpu else torch.float32  # the CPU shapes train in fp32
    peak = matmul_peak(peak_dtype, device, size=4096 if gpu else 1024)
    results: dict = {}
    for shape_name, shape in shapes(gpu).items():
        # One process per variant on the CPU (its peak resident memory is that variant's), its repeats inside.
        samples = {name: measured(stage_run, (shape, name, args.steps, batch, micro, device, args.threads, args.repeats), device)
                   for name in VARIANTS}
        samples["plain PyTorch loop (sft, padded)"] = measured(plain_loop, (shape, args.steps, batch, micro, device, args.threads, args.repeats), device)
        rows = {}
        for name, run in samples.items():
            seconds = statistics.median(run["seconds"])
            rows[name] = {"median_seconds": round(seconds, 3), "tokens_per_second": round(run["tokens"] / seconds, 1),
                          "peak_memory_mib": round(run["peak_bytes"] / 2**20, 1),
                          "padding_fraction": round(run.get("padding_fraction", 0.0), 4)}
        gen = [generation(shape, device, args.threads, 16 if not gpu else 64, 32 if not gpu else 128) for _ in range(args.repeats)]
        gen_seconds = statistics.median(g["seconds"] for g in gen)
        padded, packed = rows["sft padded"], rows["sft packed"]
        results[shape_name] = {
            "flops_per_token": samples["sft padded"]["flops_per_token"],
            "stages": rows,
            "generation_tokens_per_second": round(gen[0]["tokens"] / gen_seconds, 1),
            "packed_vs_padded_sft_tokens_per_second": round(packed["tokens_per_second"] / padded["tokens_per_second"], 3),
            "packed_vs_padded_drawn_order_sft_tokens_per_second": round(
                packed["tokens_per_second"] / rows["sft padded, drawn order"]["tokens_per_second"], 3),
            "chunked_vs_plain_sft_peak_memory": round(rows["sft padded + chunked loss"]["peak_memory_mib"] / max(padded["peak_memory_mib"], 1e-9), 3),
            "chunked_vs_plain_rank_peak_memory": round(rows["rank (shared prompt) + chunked loss"]["peak_memory_mib"]
                                                       / max(rows["rank (shared prompt)"]["peak_memory_mib"], 1e-9), 3),
            "sft_vs_plain_loop_tokens_per_second": round(padded["tokens_per_second"] / rows["plain PyTorch loop (sft, padded)"]["tokens_per_second"], 3),
        }
    peak = max(peak, matmul_peak(peak_dtype, device, size=4096 if gpu else 1024))
    for shape_result in results.values():  # MFU against the better of the two peak measurements
        for row in shape_result["stages"].values():
            row["mfu"] = round(row["tokens_per_second"] * shape_result["flops_per_token"] / peak, 4)
    machine = machine_description(args.threads)
    if gpu:
        machine["gpu"] = torch.cuda.get_device_name(0)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine, "device": device, "steps": args.steps, "repeats": args.repeats,
                                   "batch": batch, "micro_batch": micro, "loss_chunk_tokens": CHUNK,
                                   "matmul_peak_flops": {"dtype": str(peak_dtype).removeprefix("torch."), "value": round(peak)},
                                   "results": results}, indent=2) + "\n")
    print(f"matmul peak ({str(peak_dtype).removeprefix('torch.')}, {device}): {peak / 1e9:.1f} GFLOP/s")
    for shape_name, shape_result in results.items():
        print(f"\n{shape_name}")
        print(f"  {'variant':38} {'median s':>9} {'tok/s':>9} {'MFU':>7} {'peak MiB':>9} {'padding':>8}")
        for name, row in shape_result["stages"].items():
            print(f"  {name:38} {row['median_seconds']:9.2f} {row['tokens_per_second']:9.0f} {row['mfu']:7.2%} "
                  f"{row['peak_memory_mib']:9.1f} {row['padding_fraction']:8.3f}")
        print(f"  generation: {shape_result['generation_tokens_per_second']:.0f} tokens/s; packed/padded SFT tokens/s "
              f"{shape_result['packed_vs_padded_sft_tokens_per_second']:.2f}x (vs drawn order "
              f"{shape_result['packed_vs_padded_drawn_order_sft_tokens_per_second']:.2f}x); chunked/plain peak memory: SFT "
              f"{shape_result['chunked_vs_plain_sft_peak_memory']:.2f}, rank {shape_result['chunked_vs_plain_rank_peak_memory']:.2f}")


if __name__ == "__main__":
    main()
