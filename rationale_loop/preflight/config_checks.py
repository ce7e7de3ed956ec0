"""Every check the config alone allows, made before any work (`validate`).

It sits above the registries (prompt formats, tasks, loaders, objectives, optimizers, verifiers...):
each name is looked up in the table that holds it, and each objective says what it needs of the rest
of the config, so no check here names an objective. config/, below every registry, keeps only the
schemas and the helpers that need none of them; that is what keeps the package free of import cycles
(tests/test_module_shape.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from rationale_loop.config import schema
from rationale_loop.config.errors import ConfigError
from rationale_loop.config.keys import did_you_mean, schema_keys, unknown_choice, unknown_keys
from rationale_loop.config.schema import Config, source_configs
from rationale_loop.data.formats import FORMATS, MODEL_FORMAT
from rationale_loop.data.public import LOADERS
from rationale_loop.data.schemas import PREFERENCE_SCHEMA, check_schema
from rationale_loop.data.tasks import check_source
from rationale_loop.data.templates import TEMPLATES
from rationale_loop.generate import BACKEND_OPTION_KEYS, BACKENDS
from rationale_loop.phases.launch import LAUNCH_DEVICES, LAUNCH_KINDS, LAUNCH_OPTION_KEYS
from rationale_loop.models.merge import AVERAGE_METHODS, AVERAGE_OPTION_KEYS
from rationale_loop.models.model import ARCHITECTURES
from rationale_loop.training.objectives import OBJECTIVES
from rationale_loop.training.optim import ADALITE_VARIANTS, OPTIMIZERS
from rationale_loop.config.paths import RunPathError, check_output_root, check_run_name
from rationale_loop.training.rank_scope import SCOPES
from rationale_loop.run.run_config import override_key
from rationale_loop.judging.verify import VERIFIERS


def validate(cfg: DictConfig | Config, overrides: Sequence[str] = ()) -> None:
    """Every check the config alone allows, made before any work: a value found wrong after SFT or
    generation has run costs that work, and a library's message about it would not name the key.
    `overrides`, the command line's, are checked against the schema of the option each group chose."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    extra = unknown_keys(cfg)
    if extra:
        keys = schema_keys()
        guesses = [key + did_you_mean(key, keys) for key in extra]
        raise ConfigError(f"unknown config key(s) {', '.join(guesses)} (added with '+'?): no part of the tool reads them")
    try:
        check_output_root(cfg.output_root)
        check_run_name(cfg.run)
    except RunPathError as error:
        raise ConfigError(str(error)) from None
    _check_ranges(cfg)
    _check_names(cfg)
    check_option_keys(cfg, overrides)
    _check_experiment_fits_model(cfg, overrides)
    _check_combinations(cfg)


def _check_experiment_fits_model(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """A pretrained model never trains on the embedded default's settings unannounced: those (conf/experiment/
    tiny_arith.yaml: LR 2e-3, trained embeddings, temperature 1) are tuned for a 1M-parameter model trained
    from random weights, and would wreck a pretrained one. Refused rather than switched silently, so the
    user picks the settings and the run remembers the choice (docs/configuration.md)."""
    # Only a command line says which experiment was picked (none named: the default); a config checked
    # without one (composed by a caller that named its own) is not judged here.
    if not overrides or cfg.model.source == "tiny" or any(override_key(o)[1] == "experiment" for o in overrides if "=" in o):
        return
    raise ConfigError("a pretrained model with the embedded default's settings (experiment=tiny_arith, tuned for the tiny "
                      "model from random weights): add experiment=none for the recipe's, or an experiment made for it "
                      "(experiment=smollm2_svamp)")


def option_keys() -> dict[str, tuple[str, Mapping[str, Sequence[str]]]]:
    """group -> (the key that picks its option, option -> the keys of the group that option reads beside
    the ones every option reads). One schema per option: each option's keys are declared where the option
    is defined (an objective's class, the backend, launch and average tables, config/schema.py PEFT_OPTION_KEYS)."""
    return {
        "objective": ("name", {name: objective.options for name, objective in OBJECTIVES.items()}),
        "generate": ("backend", BACKEND_OPTION_KEYS),
        "peft": ("method", schema.PEFT_OPTION_KEYS),
        "launch": ("kind", LAUNCH_OPTION_KEYS),
        "average": ("method", AVERAGE_OPTION_KEYS),
    }


def unread_option_keys(cfg: DictConfig, overrides: Sequence[str]) -> Iterator[tuple[str, str, str]]:
    """(override, the choice, why) for each override that sets a key the group's chosen option does not read
    (`objective=star objective.rank_weight=3`): the choice as `objective.name=star`, and why in words
    naming the option and the ones that read the key."""
    groups = option_keys()
    for override in overrides:
        if "=" not in override:
            continue
        group, _, rest = override_key(override)[1].partition(".")
        key = rest.split(".", 1)[0].split("[", 1)[0]
        if group not in groups or not key:
            continue
        picker, keys_of = groups[group]
        chosen = cfg[group][picker]
        owners = sorted(option for option, keys in keys_of.items() if key in keys)
        own = keys_of.get(chosen, ())
        if owners and key not in own:
            reads = f"reads {', '.join(f'{group}.{k}' for k in own)} only" if own else f"reads no {group} key of its own"
            choice = f"{group}.{picker}={chosen}"
            yield override, choice, (f"{group}.{key} does nothing under {choice}, which {reads}; "
                                     f"{group}.{picker}={' or '.join(owners)} reads it")


def check_option_keys(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Refuse a key that the command line sets and the group's chosen option does not read, which would
    otherwise do nothing in silence. A YAML preset may set keys of options it does not pick (an
    experiment's defaults); only a key the user named is refused. (A key the run remembers, which a newly
    chosen option does not read, is dropped before this check: sweep.compose_remembered.)"""
    for _, _, why in unread_option_keys(cfg, overrides):
        raise ConfigError(why)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _one_of(key: str, value: Any, known: Any) -> None:
    _require(value in known, unknown_choice(key, value, known))


def _check_ranges(cfg: DictConfig) -> None:
    for stage in ("sft", "rank"):
        train = cfg[stage]
        _require(train.micro_batch_size > 0 and train.batch_size > 0 and train.batch_size % train.micro_batch_size == 0,
                 f"{stage}.batch_size ({train.batch_size}) must be a positive multiple of "
                 f"{stage}.micro_batch_size ({train.micro_batch_size})")
        _require(train.lr > 0, f"{stage}.lr must be positive, got {train.lr}")
        _require(train.steps >= 0, f"{stage}.steps must be >= 0 (0: epochs decide), got {train.steps}")
        _require(train.steps > 0 or train.epochs > 0, f"{stage}.epochs must be positive when {stage}.steps is 0, got {train.epochs}")
        _require(0.0 <= train.warmup_ratio < 1.0, f"{stage}.warmup_ratio must be in [0, 1), got {train.warmup_ratio}")
        _require(0.0 <= train.min_lr_ratio <= 1.0, f"{stage}.min_lr_ratio must be in [0, 1], got {train.min_lr_ratio}")
        _require(train.max_length > 0, f"{stage}.max_length must be positive, got {train.max_length}")
        _require(train.grad_clip >= 0, f"{stage}.grad_clip must be >= 0 (0: no clipping), got {train.grad_clip}")
        _require(train.weight_decay >= 0, f"{stage}.weight_decay must be >= 0, got {train.weight_decay}")
        _require(0.0 <= train.mixce_eta <= 1.0, f"{stage}.mixce_eta must be in [0, 1], got {train.mixce_eta}")
        _require(train.neftune_alpha >= 0, f"{stage}.neftune_alpha must be >= 0 (0: off), got {train.neftune_alpha}")
        _require(train.log_every >= 1, f"{stage}.log_every must be at least 1, got {train.log_every}")
        _require(train.save_every >= 0, f"{stage}.save_every must be >= 0 (0: never), got {train.save_every}")
        _one_of(f"{stage}.adalite_variant", train.adalite_variant, ADALITE_VARIANTS)
        _one_of(f"{stage}.mixed_precision", train.mixed_precision, schema.MIXED_PRECISION)
    gen = cfg.generate
    _require(gen.n >= 1, f"generate.n must be at least 1, got {gen.n}")
    _require(gen.temperature >= 0, f"generate.temperature must be >= 0 (0: greedy), got {gen.temperature}")
    _require(0.0 < gen.top_p <= 1.0, f"generate.top_p must be in (0, 1], got {gen.top_p}")
    _require(gen.max_new_tokens >= 1, f"generate.max_new_tokens must be at least 1, got {gen.max_new_tokens}")
    _require(gen.workers >= 1, f"generate.workers must be at least 1, got {gen.workers}")
    _require(gen.batch_size >= 1, f"generate.batch_size must be at least 1, got {gen.batch_size}")
    _require(gen.chunk_size >= 1, f"generate.chunk_size must be at least 1, got {gen.chunk_size}")
    _require(gen.tensor_parallel_size >= 1, f"generate.tensor_parallel_size must be at least 1, got {gen.tensor_parallel_size}")
    _require(0.0 < gen.gpu_memory_utilization <= 1.0, f"generate.gpu_memory_utilization must be in (0, 1], got {gen.gpu_memory_utilization}")
    _one_of("generate.too_long", gen.too_long, schema.PROMPT_TOO_LONG)
    _require(cfg.eval.max_new_tokens >= 1, f"eval.max_new_tokens must be at least 1, got {cfg.eval.max_new_tokens}")
    _require(cfg.eval.batch_size >= 1, f"eval.batch_size must be at least 1, got {cfg.eval.batch_size}")
    for split in ("sft_size", "pool_size", "eval_size"):
        value = cfg.task[split]
        _require(cfg.task.source != "tiny_arith" or value > 0, f"task.{split} must be positive for the generated task, got {value}")
    objective = cfg.objective
    _require(objective.rank_weight >= 0 and objective.anchor_weight >= 0,
             f"objective.rank_weight and objective.anchor_weight must be >= 0, got {objective.rank_weight} and {objective.anchor_weight}")
    _require(objective.beta > 0, f"objective.beta must be positive, got {objective.beta}")
    _require(objective.chosen_floor >= 0, f"objective.chosen_floor must be >= 0 (0: no floor), got {objective.chosen_floor}")
    _require(objective.rank_scope != "step" or any(d for d in objective.step_delimiters),
             "objective.rank_scope=step needs objective.step_delimiters (where a step of the reasoning format ends), "
             "and they are empty")
    _require(0.0 <= cfg.average.factor <= 1.0, f"average.factor must be in [0, 1], got {cfg.average.factor}")
    _require(cfg.rounds >= 0, f"rounds must be >= 0, got {cfg.rounds}")
    _require(cfg.peft.r >= 1, f"peft.r must be at least 1, got {cfg.peft.r}")
    _require(cfg.peft.alpha > 0, f"peft.alpha must be positive, got {cfg.peft.alpha}")
    _require(0.0 <= cfg.peft.dropout < 1.0, f"peft.dropout must be in [0, 1), got {cfg.peft.dropout}")
    for stage in ("sft", "rank"):
        _require(cfg[stage].loss_chunk_tokens >= -1,
                 f"{stage}.loss_chunk_tokens must be >= 0 (0: off) or -1 (on where the vocabulary is large), got {cfg[stage].loss_chunk_tokens}")
        _require(cfg[stage].micro_batch_tokens >= 0, f"{stage}.micro_batch_tokens must be >= 0, got {cfg[stage].micro_batch_tokens}")
    _require(cfg.launch.num_processes >= 1, f"launch.num_processes must be at least 1, got {cfg.launch.num_processes}")
    _check_machines(cfg)
    _require(len(cfg.peft.target_modules) > 0, "peft.target_modules is empty: name the modules that get an adapter")
    _require(cfg.report.pairs >= 0, f"report.pairs must be >= 0, got {cfg.report.pairs}")
    for key in ("pairs", "samples", "page"):
        _require(cfg.inspect[key] >= 1, f"inspect.{key} must be at least 1, got {cfg.inspect[key]}")
    _require(cfg.inspect.round is None or cfg.inspect.round >= 0, f"inspect.round must be >= 0 (or null: the last), got {cfg.inspect.round}")


def _check_names(cfg: DictConfig) -> None:
    """Every name a later phase looks up in a registry, looked up now (each registry's own wording), and
    every value of a closed set checked against the constant the code reads."""
    OBJECTIVES.check(cfg.objective.name)
    _one_of("objective.anchor", cfg.objective.anchor, schema.ANCHORS)
    _one_of("objective.rank_scope", cfg.objective.rank_scope, SCOPES)
    BACKENDS.check(cfg.generate.backend)
    VERIFIERS.check(cfg.task.verifier, "task.verifier")
    VERIFIERS.check(cfg.verify.kind, "verify.kind")
    _one_of("verify.chain", cfg.verify.chain, schema.CHAIN_MODES)
    if cfg.task.prompt_format != MODEL_FORMAT:  # the model's own template: read off its tokenizer when the run starts
        FORMATS.check(cfg.task.prompt_format)
    check_source(cfg.task.source)
    _one_of("task.arith.answer", cfg.task.arith.answer, schema.ARITH_ANSWERS)
    _one_of("task.pool_arith.answer", cfg.task.pool_arith.answer, schema.ARITH_ANSWERS)
    for split, source in cfg.task.files.items():
        _one_of(f"task.files.{split}", split, schema.SPLITS)
        LOADERS.check(source.loader, f"task.files.{split}.loader")
    _one_of("model.source", cfg.model.source, schema.MODEL_SOURCES)
    _one_of("model.architecture", cfg.model.architecture, ARCHITECTURES)
    _one_of("model.dtype", cfg.model.dtype, schema.DTYPES)
    _one_of("generate.dtype", cfg.generate.dtype, schema.GENERATE_DTYPES)
    for stage in ("sft", "rank"):
        OPTIMIZERS.check(str(cfg[stage].optimizer).lower(), f"{stage}.optimizer")
    _one_of("average.method", cfg.average.method, AVERAGE_METHODS)
    _one_of("peft.method", cfg.peft.method, schema.PEFT_METHODS)
    _one_of("launch.kind", cfg.launch.kind, LAUNCH_KINDS)
    _one_of("launch.device", cfg.launch.device, LAUNCH_DEVICES)
    for name in cfg.data.formats:
        TEMPLATES.check(name)
    _one_of("data.multi_format", cfg.data.multi_format, schema.MULTI_FORMATS)
    _one_of("data.too_long", cfg.data.too_long, schema.CONVERSATION_TOO_LONG)
    for name, source in source_configs(cfg.data).items():
        check_schema(name, source.schema)
        _require(bool(source.path), f"data.sources.{name}.path is empty: name a file, a folder or a hub id")
        _require(source.schema != PREFERENCE_SCHEMA or cfg.objective.name in pair_objectives(),
                 f"data.sources.{name} holds preference pairs, which only a pair objective's rank stage trains on "
                 f"(objective={' or '.join(pair_objectives())}), not objective={cfg.objective.name}")
    _require(cfg.data.preference_per_round >= 0, "data.preference_per_round must be >= 0 (0: every pair, every round)")
    _check_decontamination(cfg.data)


def _check_decontamination(data: DictConfig) -> None:
    _require(data.decontaminate_ngram >= 0, f"data.decontaminate_ngram must be >= 0 (0: off), got {data.decontaminate_ngram}")
    _require(0.0 < data.near_duplicate_threshold <= 1.0, f"data.near_duplicate_threshold must be in (0, 1] (1: off), got {data.near_duplicate_threshold}")
    _require(0.0 < data.embedding_threshold <= 1.0, f"data.embedding_threshold must be in (0, 1], got {data.embedding_threshold}")
    if data.embedding_model:
        missing = [name for name in ("sentence_transformers", "faiss") if importlib.util.find_spec(name) is None]
        _require(not missing, f"data.embedding_model={data.embedding_model} needs {' and '.join(missing)}: "
                              'pip install -e ".[decontam]" (sentence-transformers, faiss-cpu)')
    for index, path in enumerate(data.decontaminate_against):
        looks_like_file = Path(path).suffix in (".json", ".jsonl", ".parquet", ".csv")
        _require(not looks_like_file or Path(path).exists(), f"data.decontaminate_against[{index}]={path}: no such file")


def declaring(trait: str) -> list[str]:
    """The registered objectives whose class declares `trait` (objectives.Declared), for a message that
    lists them."""
    return sorted(name for name, objective in OBJECTIVES.items() if getattr(objective, trait, False))


def pair_objectives() -> list[str]:
    """The objectives that train on pairs of a correct and an incorrect sample of one question (each says so)."""
    return declaring("trains_on_pairs")


# Options of the pair objectives only: set on another, they would do nothing.
PAIR_OPTIONS = {"rank_scope": "sequence", "detach_rejected": False, "chosen_floor": 0.0}


def _check_combinations(cfg: DictConfig) -> None:
    gen, objective = cfg.generate, cfg.objective
    declared = OBJECTIVES.get(objective.name)
    _require(not (gen.temperature == 0 and gen.n > 1),
             f"generate.temperature=0 is greedy: its generate.n={gen.n} samples of a question would all be the same; "
             "set a temperature above 0 or n=1")
    pairs = declared.trains_on_pairs
    for key, default in PAIR_OPTIONS.items():
        _require(pairs or objective[key] == default,
                 f"objective.{key}={objective[key]} is an option of the pair objectives ({', '.join(pair_objectives())}), "
                 f"not of objective={objective.name}")
    _require(not (pairs and gen.n < 2),
             f"objective={objective.name} trains on pairs of a correct and an incorrect sample of one question, "
             f"which generate.n={gen.n} cannot give; set generate.n to 2 or more")
    _require(not objective.rationalize or declared.rationalizes,
             f"objective.rationalize needs an objective that rationalizes (objective={' or '.join(declaring('rationalizes'))}), "
             f"not objective={objective.name}")
    _require(not (cfg.model.source == "pretrained" and not cfg.model.path and not cfg.model.gguf_file),
             "model.path (a folder or hub id) or model.gguf_file is required when model.source=pretrained")
    _require(not (cfg.model.path and cfg.model.gguf_file),
             f"model.path={cfg.model.path} and model.gguf_file={cfg.model.gguf_file} both name the model: keep one")
    _require(not (cfg.model.source == "tiny" and cfg.task.prompt_format == MODEL_FORMAT),
             "task.prompt_format=model asks in the model's own chat template, and the tiny model has none: name a format "
             "(tinycot, chat-ml, ...)")
    if cfg.model.source == "pretrained" and cfg.model.gguf_file:
        from rationale_loop.models.gguf import resolve_gguf_file

        resolve_gguf_file(cfg.model.gguf_file)  # a missing file or package, named before any work
    _require(not (cfg.model.source == "tiny" and cfg.model.gguf_file), "model.gguf_file needs model.source=pretrained (model=pretrained)")
    _require(not (cfg.task.source == "files" and not cfg.task.files), "task.source=files needs task.files (sft, pool and eval)")
    _require(not cfg.rank.packing or declared.token_level,
             f"rank.packing packs token-level rows (objective={' or '.join(declaring('token_level'))}); objective={objective.name} "
             "does not train on them: set rank.packing=false")
    sharded = cfg.launch.kind == "fsdp" or (cfg.launch.kind == "deepspeed" and cfg.launch.zero_stage == 3)
    for stage in ("sft", "rank"):
        _require(not (sharded and cfg[stage].loss_chunk_tokens > 0),
                 f"{stage}.loss_chunk_tokens reads the output head's weight outside the forward pass, which launch={cfg.launch.kind} "
                 f"keeps sharded there; set {stage}.loss_chunk_tokens=0")
    if cfg.peft.method == "qlora":
        _require(torch.cuda.is_available(), "peft=qlora loads the base in 4 bits with bitsandbytes, which needs a CUDA GPU; "
                                            "this machine has none (peft=lora trains an adapter on the full-precision base)")
        _require(importlib.util.find_spec("bitsandbytes") is not None, "peft=qlora needs bitsandbytes: pip install bitsandbytes")


def _check_machines(cfg: DictConfig) -> None:
    """A launch over several machines (docs/scaling.md): a rank among them, an address to meet at, and
    processes (and sampling workers) that share out evenly."""
    launch = cfg.launch
    _require(launch.num_machines >= 1, f"launch.num_machines must be at least 1, got {launch.num_machines}")
    if launch.num_machines == 1:
        return
    _require(0 <= launch.machine_rank < launch.num_machines,
             f"launch.machine_rank must be in [0, {launch.num_machines}) for launch.num_machines={launch.num_machines}, got {launch.machine_rank}")
    _require(bool(launch.main_address), f"launch.num_machines={launch.num_machines} needs launch.main_address: machine 0's address, which every machine reaches")
    _require(1 <= launch.main_port <= 65535, f"launch.main_port must be a port number (1-65535), got {launch.main_port}")
    _require(launch.num_processes % launch.num_machines == 0,
             f"launch.num_processes={launch.num_processes} (all machines' processes) must be a multiple of launch.num_machines={launch.num_machines}")
    _require(cfg.generate.workers == 1 or cfg.generate.workers % launch.num_machines == 0,
             f"generate.workers={cfg.generate.workers} (all machines' workers) must be a multiple of launch.num_machines={launch.num_machines}")

