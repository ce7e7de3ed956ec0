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
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rationale_loop.config.schema import Config
from rationale_loop.data.formats import MODEL_FORMAT
from rationale_loop.config.errors import UserError
from rationale_loop.run.integrity import check_checkpoint

CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja")


EXPORT_MARKER = ".rationale_loop_export.json"  # what an export wrote: --force replaces those files, nothing else


def default_target(run: Path, k: int, root: Path = Path("outputs/runs")) -> Path:
    """outputs/exports/<the run's path under the runs root>/round_KK: two runs never share a folder
    (team/alice and bob/alice stay apart), as run names would by their last part alone."""
    run, root = Path(run).resolve(), Path(root).resolve()
    relative = run.relative_to(root) if root in run.parents else Path(run.name)
    return Path("outputs/exports") / relative / f"round_{k:02d}"


def check_target(target: Path) -> None:
    """Refuse a target that is, or holds, what a user keeps: the file system root, the home directory,
    the working directory or a directory above it."""
    resolved = Path(target).expanduser().resolve()
    cwd = Path.cwd().resolve()
    protected = {Path(resolved.anchor), Path.home().resolve(), cwd, *cwd.parents}
    if resolved in protected:
        raise UserError(f"--out {target} is {resolved}, which holds more than an export (the root, home, the working "
                        "directory or a directory above it); give the export a directory of its own")
    if os.path.lexists(target) and (Path(target).is_symlink() or not Path(target).is_dir()):
        raise UserError(f"--out {target} exists and is not a directory; give the export a new directory")


def export_round(run: Path, k: int | None, target: Path | None, force: bool = False, license: str = "unknown") -> Path:
    """Write round k of `run` (default: the last finished) into `target`: a new or empty directory, or
    with force an earlier export's (only the files that export wrote are replaced; anything else in it
    stays). Files are written beside and moved in whole, with the modes of a normal download."""
    from rationale_loop.run.rundir import is_done, next_round, round_dir

    run = Path(run)
    last = next_round(run) - 1
    if last < 0:
        raise UserError(f"{run} has no finished round to export")
    k = last if k is None else k
    if not is_done(run, k):
        raise UserError(f"{round_dir(run, k)} is not a finished round (the last finished one is round {last})")
    source = round_dir(run, k)
    check_checkpoint(source, f"round {k}, exported")
    target = Path(target) if target else default_target(run, k)
    check_target(target)
    earlier = _earlier_export(target, force)
    card = model_card(run, k, license=license)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target, prefix=".export."))
    try:
        for path in sorted((source / "checkpoint").iterdir()):
            if path.is_file() and not path.is_symlink() and path.suffix in CHECKPOINT_SUFFIXES:
                shutil.copyfile(path, staging / path.name)
        _publishable_tokenizer(source / "checkpoint", staging, _saved_config(source).task.prompt_format)
        card.save(str(staging / "README.md"))
        written = sorted(path.name for path in staging.iterdir())
        (staging / EXPORT_MARKER).write_text(json.dumps({"run": str(run.resolve()), "round": k, "files": written}, indent=1) + "\n")
        for name in set(earlier) - set(written):  # an earlier export's file this one does not write
            (target / name).unlink(missing_ok=True)
        for name in [*written, EXPORT_MARKER]:
            os.chmod(staging / name, 0o644)
            os.replace(staging / name, target / name)
        os.chmod(target, 0o755)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _earlier_export(target: Path, force: bool) -> list[str]:
    """The files an earlier export wrote into `target` (replaced by this one), or [] for a new or empty
    directory; a directory holding anything else is refused: an export never deletes what it did not write."""
    if not target.exists() or not any(target.iterdir()):
        return []
    marker = target / EXPORT_MARKER
    if not marker.is_file():
        raise UserError(f"--out {target} is not empty and holds no earlier export; give the export a new directory "
                        "(nothing in it is replaced or deleted)")
    if not force:
        raise UserError(f"{target} holds an earlier export; pass --force to replace it (only the files it wrote)")
    from rationale_loop.run.records import read_json

    files = read_json(marker).get("files", [])
    return [name for name in files if isinstance(name, str) and "/" not in name and not name.startswith(".")]


def _publishable_tokenizer(checkpoint: Path, staging: Path, prompt_format: str) -> None:
    """The round's tokenizer with the chat_template of the run's prompt format, whatever template the
    checkpoint holds (a pretrained model's own, a data= run's chat format), so that `apply_chat_template`
    with a generation prompt renders a question exactly as the rounds asked it; and with a tokenizer class
    that transformers 4 knows too (transformers 5 saves TokenizersBackend, a name 4.x cannot load)."""
    from transformers import AutoTokenizer

    from rationale_loop.models.chat_template import reasoning_chat_template
    from rationale_loop.data.model_format import export_chat_template

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    fmt = run_format(checkpoint, prompt_format, tokenizer)
    if prompt_format == MODEL_FORMAT:
        tokenizer.chat_template = export_chat_template(tokenizer.chat_template, fmt)
    else:
        tokenizer.chat_template = reasoning_chat_template(fmt, tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "tokenizer.model"):
        (staging / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(str(staging))
    config_path = staging / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def run_format(checkpoint: Path, prompt_format: str, tokenizer: Any = None) -> Any:
    """The run's reasoning format: a named one, or the model's own template as the checkpoint's tokenizer
    holds it (a run asked in it never replaces it: phases/train.py)."""
    from rationale_loop.data.formats import get_format
    from rationale_loop.data.model_format import model_format

    if prompt_format != MODEL_FORMAT:
        return get_format(prompt_format)
    if tokenizer is None:
        from rationale_loop.models.model import load_tokenizer

        tokenizer = load_tokenizer(checkpoint)
    return model_format(tokenizer, str(checkpoint))


def _saved_config(round_path: Path) -> Any:
    """A round's config.yaml over the schema's defaults (a run made before a key existed ran with its
    default), with every `${...}` kept as its text: an `${oc.env:SECRET}` must never be looked up into
    a file meant to be published."""
    from rationale_loop.run.run_config import read_saved_config

    defaults = OmegaConf.create(OmegaConf.to_container(OmegaConf.structured(Config)))
    return OmegaConf.merge(defaults, OmegaConf.create(_literal(read_saved_config(round_path / "config.yaml"))))


def _literal(value: Any) -> Any:
    """Interpolations escaped, so OmegaConf reads them as plain text."""
    if isinstance(value, dict):
        return {key: _literal(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_literal(item) for item in value]
    return value.replace("${", "\\${") if isinstance(value, str) else value


def _rounds(run: Path, k: int) -> list[dict[str, Any]]:
    from rationale_loop.run.rundir import read_round_metrics

    return [read_round_metrics(run, j) for j in range(k + 1)]


def _stage(train: Any, peft: Any, rounds: list[dict[str, Any]], unit: str = "sequences") -> list[tuple[str, str]]:
    """The settings table of a training stage, as `rounds` (the rounds that trained with it) ran it."""
    length = f"{train.steps} optimizer steps" if train.steps > 0 else f"{train.epochs:g} epoch(s)"
    optimizer = train.optimizer if train.optimizer != "adalite" else f"adalite ({train.adalite_variant}, lambda {train.adalite_lambda:g})"
    rows = [("learning rate", f"{train.lr:g}, cosine schedule, warmup {train.warmup_ratio:g} of the steps"),
            ("length", length), ("batch", _batch(train, rounds, unit)),
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


def _batch(train: Any, rounds: list[dict[str, Any]], unit: str) -> str:
    """The configured batch, and the one a round took when it had fewer items than that (a batch is never
    more than the epochs' items: train._schedule_order, which cut the round's batches)."""
    from rationale_loop.training.train import _schedule_order

    configured = f"{train.batch_size} {unit} (micro-batches of {train.micro_batch_size})"
    taken = {row["round"]: len(_schedule_order(row["train_items"], train.epochs, train.batch_size, 0, train.steps)[0])
             for row in rounds if row.get("train_steps") and row.get("train_items")}
    smaller = [f"round {k}: {size}" for k, size in taken.items() if size < train.batch_size]
    return configured + (f"; {', '.join(smaller)} (all its items)" if smaller else "")


def _what_happened(k: int, rounds: list[dict[str, Any]], cfg: Any) -> str:
    """What the run did to the model after SFT, as its rounds recorded it: a round that trained on nothing
    (no pair mined...) kept the model it started from, and the card says so rather than claim training."""
    if k == 0:
        return "supervised finetuning on worked rationales (round 0; no round of self-training)."
    idle = [row for row in rounds[1:] if not row.get("train_steps")]
    how = (f"supervised finetuning on worked rationales, then {k} round(s) of self-training in which the model answers "
           f"a pool of questions, its answers are checked against the known ones, and it is trained on what it got right "
           f"({_objective(cfg)}).")
    if not idle:
        return how
    why = "; ".join(f"round {row['round']}: {row.get('note') or 'nothing to train on'}" for row in idle)
    if len(idle) == k:
        return (f"supervised finetuning on worked rationales; its {k} round(s) of self-training trained on nothing "
                f"({why}), so its weights are those of SFT.")
    return f"{how} {len(idle)} of the {k} rounds trained on nothing and kept the model they started from ({why})."


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


def _declared(cfg: Any) -> Any:
    """The run's objective class, which describes itself (objectives.Declared); None for a name no longer
    registered (a run made by another version), whose card then gives the bare name."""
    from rationale_loop.training.objectives import OBJECTIVES  # torch: loaded when a card is written, not on import

    return OBJECTIVES.get(cfg.objective.name) if cfg.objective.name in OBJECTIVES else None


def _objective(cfg: Any) -> str:
    o, declared = cfg.objective, _declared(cfg)
    options = [f"rank scope {o.get('rank_scope')}"] if o.get("rank_scope", "sequence") != "sequence" else []
    options += ["rejected scores detached"] if o.get("detach_rejected", False) else []
    options += [f"chosen-score floor {o.chosen_floor:g}"] if o.get("chosen_floor", 0.0) > 0 else []
    return (declared.describe(o) if declared else str(o.name)) + (f" ({', '.join(options)})" if options else "")


def _accuracy(row: dict[str, Any]) -> str:
    p, n = row.get("eval_accuracy"), row.get("eval_questions")
    if p is None or not n:
        return "-"
    return f"{p:.3f} ± {math.sqrt(p * (1 - p) / n):.3f}"


def _hub_id(path: str) -> str | None:
    """A data path that names a hub dataset (owner/name, not a local file), for the card's metadata."""
    text = str(path)
    parts = text.split("/")
    return text if len(parts) == 2 and all(parts) and not text.startswith(".") and not Path(text).exists() else None


def _base_hub_id(model: Any) -> str | None:
    """The base model's hub id for the card's metadata: model.hub_id, a model.path that is a hub id, or what
    a GGUF file's metadata names; never a local path (it would publish a machine's layout)."""
    if model.source == "tiny":
        return None
    if model.get("hub_id"):
        return str(model.hub_id)
    if model.get("gguf_file"):
        from rationale_loop.models.gguf import gguf_hub_id

        return gguf_hub_id(str(model.gguf_file))
    return _hub_id(str(model.path)) if model.path else None


def _local_name(model: Any) -> str:
    """A base model without a hub id, named in the card by its file or folder name alone."""
    local = str(model.get("gguf_file") or model.path or "not recorded")
    return Path(local.rpartition(":")[2] if model.get("gguf_file") else local).name or local


def _mix_sources(round0: Path) -> list[tuple[str, dict[str, Any]]]:
    """The data= sources of the SFT mix and what was kept of each (round_00's manifest), [] without one."""
    from rationale_loop.run.run_config import MIX_MANIFEST
    from rationale_loop.run.records import read_json

    manifest = round0 / MIX_MANIFEST
    return list(read_json(manifest).get("sources", {}).items()) if manifest.exists() else []


def _context(checkpoint: Path) -> int | None:
    from rationale_loop.run.records import read_json

    config = read_json(checkpoint / "config.json") if (checkpoint / "config.json").exists() else {}
    value = config.get("max_position_embeddings")
    return value if isinstance(value, int) and value > 0 else None


def model_card(run: Path, k: int, license: str = "unknown") -> Any:
    """The model card: metadata a hub reads (license, base model, datasets, pipeline tag, tags) and a body
    written from what the run recorded."""
    from huggingface_hub import ModelCard, ModelCardData

    body, base, datasets, tags = _card_body(run, k)
    data = ModelCardData(license=license, library_name="transformers", pipeline_tag="text-generation",
                         base_model=base, datasets=datasets or None, tags=tags)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _results_table(rounds: list[dict[str, Any]], objective: str) -> list[str]:
    """The card's results: a row per round, after a row for the base model as loaded when it was evaluated."""
    results = ["| round | stage | held-out accuracy (± s.e.) | pass@n on the pool | pairs | trained on |", "|---|---|---|---|---|---|"]
    if rounds[0].get("base_eval_accuracy") is not None:  # where the model started: answers read from free text
        base = _accuracy({"eval_accuracy": rounds[0]["base_eval_accuracy"], "eval_questions": rounds[0].get("base_eval_questions")})
        results.append(f"| - | base model, before SFT | {base} | - | - | - |")
    for row in rounds:
        stage = "SFT" if row["round"] == 0 else objective
        pass_at = f"{row['pass_at_n']:.3f}" if row.get("pass_at_n") is not None else "-"
        results.append(f"| {row['round']} | {stage} | {_accuracy(row)} | {pass_at} | {row.get('pairs', '-')} | "
                       f"{row.get('train_items', '-')} items, {row.get('train_steps', '-')} steps |")
    return results


def _card_body(run: Path, k: int) -> tuple[str, str | None, list[str], list[str]]:
    from rationale_loop.run.rundir import round_dir

    cfg, first = _saved_config(round_dir(run, k)), _saved_config(round_dir(run, 0))
    rounds = _rounds(run, k)
    base_model = _base_hub_id(first.model)
    base_line = (f"a {first.model.num_layers}-layer, {first.model.hidden_size}-wide Llama-style model built from its config "
                 f"with random weights (seed {first.model.init_seed}) and a tokenizer trained on the SFT text"
                 if first.model.source == "tiny" else f"`{base_model or _local_name(first.model)}`")
    fmt = run_format(round_dir(run, k) / "checkpoint", cfg.task.prompt_format)
    name = f"{run.name}-round_{k:02d}"
    sources = _mix_sources(round_dir(run, 0))
    datasets = [d for d in [_hub_id(str(cfg.task.source)) if cfg.task.source not in ("tiny_arith", "files") else None,
                            *(_hub_id(str(entry.get("path", ""))) for _, entry in sources)] if d]
    context = _context(round_dir(run, k) / "checkpoint")
    new_tokens = min(256, context // 2) if context else 256  # a question and its answer must fit the context
    pool_rows = next((r.get("questions") for r in rounds[1:] if r.get("questions") is not None), None)
    base_row = rounds[0].get("base_eval_accuracy") is not None
    results = _results_table(rounds, str(cfg.objective.name))
    tags = ["rationale_loop", "self-training", str(cfg.objective.name), "reasoning"]
    declared = _declared(cfg)
    gold_anchor = declared is not None and "pool" in declared.gold_rationales_needed(cfg.objective)
    gen = cfg.generate
    mix = [f"- Mixed into SFT (`data=`): " + ", ".join(f"`{source_name}` ({entry.get('schema')}, {entry.get('path')}): "
                                                     f"{entry.get('kept', '?')} of {entry.get('rows', '?')} rows kept"
                                                     for source_name, entry in sources)] if sources else []
    lines = [
        f"# {name}", "",
        f"{name} is {base_line}, finetuned with rationale_loop: {_what_happened(k, rounds, cfg)}",
        "",
        "## Data", "",
        f"- SFT: {_split_source(first, 'sft', rounds[0].get('train_items'))} trained on (question, gold rationale, answer)",
        f"- Pool for the rounds: {_split_source(cfg, 'pool', pool_rows)} (the rounds use each question and its answer"
        + (", and its gold rationale as the CE anchor)" if gold_anchor else "; no gold rationale)"),
        f"- Held-out evaluation: {_split_source(cfg, 'eval', rounds[-1].get('eval_questions'))}; no evaluation question is in the SFT set or the pool",
        *mix,
        "",
        "## Prompt format", "",
        f"`{cfg.task.prompt_format}`. A question is asked as:", "", "```", fmt.prompt("<question>") + fmt.response("<rationale>", "<answer>"), "```",
        "",
        "## Procedure", "",
        "### 1. Supervised finetuning", "", _table(_stage(first.sft, first.peft, rounds[:1])), "",
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
            "", _table(_stage(cfg.rank, cfg.peft, rounds[1:], "pairs" if declared and declared.trains_on_pairs else "sequences")), "",
        ]
    lines += [
        "## Results", "",
        "Greedy accuracy on the held-out questions after each stage (standard error sqrt(p(1-p)/n))"
        + ("; the base model's answers are read from free text (a last number, \"the answer is\", ####, \\boxed{})"
           if base_row else "") + ":", "",
        *results, "",
        "## Use", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        f"prompt = {fmt.prompt('Ann has 3 pens. She finds 2 more.')!r}",
        f'output = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens={new_tokens})',
        "# or: tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": question}], add_generation_prompt=True)",
        "print(tokenizer.decode(output[0], skip_special_tokens=True))",
        "```", "",
        "## Limitations", "",
        "Accuracy is measured on held-out questions of the same distribution as the training data; it says "
        "nothing of other tasks. A self-trained model learns from its own completions, judged only by their "
        "final answer: a rationale that reaches the right answer by a wrong route can be reinforced.", "",
    ]
    return "\n".join(line for line in lines if line is not None).replace("\n\n\n", "\n\n"), base_model, datasets, tags
