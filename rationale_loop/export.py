"""`make export RUN=name [ROUND=k]`: a finished round's model as a folder to publish.

The folder is a plain save_pretrained directory (the round's checkpoint, an adapter already merged)
with its tokenizer and a model card (README.md) written from what the run recorded: the base model,
where each split came from and how many rows it had, the prompt format, each stage's hyperparameters,
and the held-out accuracy of every round up to the exported one. Nothing in it is made up: a value the
run did not record is left out.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rationale_loop.errors import UserError
from rationale_loop.integrity import check_checkpoint

CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja")


def export_round(run: Path, k: int | None, target: Path | None) -> Path:
    from rationale_loop.loop import is_done, next_round, round_dir
    from rationale_loop.model import save_directory

    run = Path(run)
    last = next_round(run) - 1
    if last < 0:
        raise UserError(f"{run} has no finished round to export")
    k = last if k is None else k
    if not is_done(run, k):
        raise UserError(f"{round_dir(run, k)} is not a finished round (the last finished one is round {last})")
    source = round_dir(run, k)
    check_checkpoint(source, f"round {k}, exported")
    target = Path(target) if target else Path("outputs/exports") / f"{run.name}-round_{k:02d}"
    card = model_card(run, k)
    with save_directory(target) as staging:
        for path in sorted((source / "checkpoint").iterdir()):
            if path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
                shutil.copy2(path, staging / path.name)
        (staging / "README.md").write_text(card, encoding="utf-8")
    return target


def _saved_config(round_path: Path) -> Any:
    """A round's config.yaml over the schema's defaults: a run made before a key existed ran with its default."""
    from rationale_loop.config import Config

    defaults = OmegaConf.create(OmegaConf.to_container(OmegaConf.structured(Config)))
    return OmegaConf.merge(defaults, OmegaConf.load(round_path / "config.yaml"))


def _rounds(run: Path, k: int) -> list[dict[str, Any]]:
    from rationale_loop.loop import round_dir

    return [json.loads((round_dir(run, j) / "metrics.json").read_text()) for j in range(k + 1)]


def _stage(train: Any, peft: Any) -> list[tuple[str, str]]:
    length = f"{train.steps} optimizer steps" if train.steps > 0 else f"{train.epochs:g} epoch(s)"
    optimizer = train.optimizer if train.optimizer != "adalite" else f"adalite ({train.adalite_variant}, lambda {train.adalite_lambda:g})"
    rows = [("learning rate", f"{train.lr:g}, cosine schedule, warmup {train.warmup_ratio:g} of the steps"),
            ("length", length), ("batch", f"{train.batch_size} sequences (micro-batches of {train.micro_batch_size})"),
            ("optimizer", f"{optimizer}, weight decay {train.weight_decay:g}, gradient clip {train.grad_clip:g}"),
            ("max length", f"{train.max_length} tokens (longer rows dropped)")]
    if train.mixce_eta < 1:
        rows.append(("MixCE", f"eta {train.mixce_eta:g}"))
    if train.neftune_alpha > 0:
        rows.append(("NEFTune", f"alpha {train.neftune_alpha:g}"))
    if train.freeze_embeddings:
        rows.append(("embeddings", "frozen"))
    if peft.method != "none":
        rows.append(("adapter", f"{peft.method}, r {peft.r}, alpha {peft.alpha:g}, dropout {peft.dropout:g}, "
                                f"on {', '.join(peft.target_modules)}; merged into the weights"))
    return rows


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| setting | value |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def _split_source(cfg: Any, split: str, rows: int | None) -> str:
    task = cfg.task
    counted = f"{rows} rows" if rows is not None else "rows not recorded"
    if task.source == "tiny_arith":
        spec = task.arith if split == "sft" else task.pool_arith
        return (f"tiny_arith, generated (seed {task.seed}): {spec.min_steps}-{spec.max_steps} events, numbers up to "
                f"{spec.max_value}, answer {spec.answer}; {counted}")
    source = task.files.get(split)
    where = f"{source.loader} file {source.path} from item {source.start}" if source else "not recorded"
    return f"{where}; {counted}"


def _objective(cfg: Any) -> str:
    o = cfg.objective
    described = {
        "memphis": f"Memphis-CoT ranking loss: {o.anchor_weight:g} x CE anchor on the {o.anchor} response + {o.rank_weight:g} x "
                   "rank = -log(e^s_c / (e^s_c + mean_j e^s_rj)) over length-normalised log-probabilities",
        "star": "STaR: cross-entropy on the model's own correct responses" + (", with rationalization" if o.rationalize else ""),
        "spin": f"SPIN: DPO (beta {o.beta:g}) with the SFT set's gold responses chosen, the model's own rejected",
        "cpo_simpo": f"CPO-SimPO (beta {o.beta:g}, gamma {o.gamma:g}, NLL weight {o.alpha:g})",
        "sft": "SFT continued on the SFT set (no self-training)",
    }
    return described.get(o.name, o.name)


def _accuracy(row: dict[str, Any]) -> str:
    p, n = row.get("eval_accuracy"), row.get("eval_questions")
    if p is None or not n:
        return "-"
    return f"{p:.3f} ± {math.sqrt(p * (1 - p) / n):.3f}"


def model_card(run: Path, k: int) -> str:
    from rationale_loop.data.formats import get_format
    from rationale_loop.loop import round_dir

    cfg, first = _saved_config(round_dir(run, k)), _saved_config(round_dir(run, 0))
    rounds = _rounds(run, k)
    base = rounds[0].get("base_model", first.model.path or "not recorded")
    base_line = (f"a {first.model.num_layers}-layer, {first.model.hidden_size}-wide Llama-style model built from its config "
                 f"with random weights (seed {first.model.init_seed}) and a tokenizer trained on the SFT text"
                 if first.model.source == "tiny" else f"`{base}`")
    fmt = get_format(cfg.task.prompt_format)
    name = f"{run.name}-round_{k:02d}"
    pool_rows = next((r.get("questions") for r in rounds[1:] if r.get("questions") is not None), None)
    results = ["| round | stage | held-out accuracy (± s.e.) | pass@n on the pool | pairs | trained on |", "|---|---|---|---|---|---|"]
    for row in rounds:
        stage = "SFT" if row["round"] == 0 else cfg.objective.name
        pass_at = f"{row['pass_at_n']:.3f}" if row.get("pass_at_n") is not None else "-"
        results.append(f"| {row['round']} | {stage} | {_accuracy(row)} | {pass_at} | {row.get('pairs', '-')} | "
                       f"{row.get('train_items', '-')} items, {row.get('train_steps', '-')} steps |")
    front = ["---", "library_name: transformers", *([] if first.model.source == "tiny" else [f"base_model: {base}"]),
             "tags:", "- rationale_loop", "- self-training", f"- {cfg.objective.name}", "- reasoning", "---"]
    gold_anchor = cfg.objective.name == "memphis" and cfg.objective.anchor == "gold"
    gen = cfg.generate
    lines = [
        *front, "",
        f"# {name}", "",
        f"{name} is {base_line}, finetuned with rationale_loop: supervised finetuning on worked rationales, then "
        f"{k} round(s) of self-training in which the model answers a pool of questions, its answers are checked "
        f"against the known ones, and it is trained on what it got right ({_objective(cfg)}).",
        "",
        "## Data", "",
        f"- SFT: {_split_source(first, 'sft', rounds[0].get('train_items'))} trained on (question, gold rationale, answer)",
        f"- Pool for the rounds: {_split_source(cfg, 'pool', pool_rows)} (the rounds use each question and its answer"
        + (", and its gold rationale as the CE anchor)" if gold_anchor else "; no gold rationale)"),
        f"- Held-out evaluation: {_split_source(cfg, 'eval', rounds[-1].get('eval_questions'))}; no evaluation question is in the SFT set or the pool",
        "",
        "## Prompt format", "",
        f"`{cfg.task.prompt_format}`. A question is asked as:", "", "```", fmt.prompt("<question>") + fmt.response("<rationale>", "<answer>"), "```",
        "",
        "## Procedure", "",
        "### 1. Supervised finetuning", "", _table(_stage(first.sft, first.peft)), "",
    ]
    if k > 0:
        lines += [
            f"### 2. Self-training, {k} round(s)", "",
            f"Each round starts from the previous round's model. It samples {gen.n} completions per pool question "
            f"(temperature {gen.temperature:g}, top-p {gen.top_p:g}, at most {gen.max_new_tokens} new tokens), checks "
            f"each answer with the `{cfg.verify.kind}` verifier, pairs unique correct with unique incorrect completions "
            f"one to one, and trains with {_objective(cfg)}."
            + (f" Weights are {cfg.average.method}-averaged with the round's start (factor {cfg.average.factor:g})."
               if cfg.average.method != "none" else ""),
            "", _table(_stage(cfg.rank, cfg.peft)), "",
        ]
    lines += [
        "## Results", "",
        "Greedy accuracy on the held-out questions after each stage (standard error sqrt(p(1-p)/n)):", "",
        *results, "",
        "## Use", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        f"prompt = {fmt.prompt('Ann has 3 pens. She finds 2 more.')!r}",
        'output = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=256)',
        "print(tokenizer.decode(output[0], skip_special_tokens=True))",
        "```", "",
        "## Limitations", "",
        "Accuracy is measured on held-out questions of the same distribution as the training data; it says "
        "nothing of other tasks. A self-trained model learns from its own completions, judged only by their "
        "final answer: a rationale that reaches the right answer by a wrong route can be reinforced.", "",
    ]
    return "\n".join(line for line in lines if line is not None).replace("\n\n\n", "\n\n")
