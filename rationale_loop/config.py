"""Structured config schemas, registered in Hydra's ConfigStore.

`conf/config.yaml` starts its defaults list with `base_config`, so every YAML file and every command-line
override is merged into these dataclasses: a misspelt key or a wrong type fails at the command line,
naming the key. Group defaults carry the recipe's values (RECIPE.md); `experiment/tiny_arith.yaml`
shrinks them to the embedded default that runs on a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


@dataclass
class ModelConfig:
    # "tiny": build (once, then cached) a small Llama-style model and a tokenizer trained on the task's
    # text; "pretrained": load `path`, a local save_pretrained directory or a hub id.
    source: str = "tiny"
    path: Optional[str] = None
    cache_dir: str = "outputs/models"
    dtype: str = "float32"
    # Shape of the tiny model (source=tiny only).
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    vocab_size: int = 384
    max_position_embeddings: int = 256
    init_seed: int = 0


@dataclass
class ArithConfig:
    """Difficulty of the embedded tiny_arith task."""

    min_steps: int = 2
    max_steps: int = 3
    max_start: int = 15
    max_operand: int = 9
    max_value: int = 60
    answer: str = "final"  # "final": the count at the end; "running": the count after every event


@dataclass
class SplitSource:
    """Where a file-backed task's split comes from: a loader, a file and the first item taken."""

    loader: str = "gsm8k"  # a key of rationale_loop.data.public.LOADERS
    path: str = ""  # relative to task.data_dir, or absolute
    start: int = 0


@dataclass
class TaskConfig:
    name: str = "tiny_arith"
    # "tiny_arith": generated from the seed; "files": each split read from `files` below.
    source: str = "tiny_arith"
    prompt_format: str = "tinycot"
    seed: int = 1234
    # Split sizes; 0 or less means "all" for file-backed tasks.
    sft_size: int = 1500
    pool_size: int = 1024
    eval_size: int = 1000
    arith: ArithConfig = field(default_factory=ArithConfig)  # tiny_arith: the SFT split's problems
    # tiny_arith: the pool's and the eval split's problems (one distribution). A pool harder than the
    # SFT set is STaR's setting: the rounds must learn what SFT did not show.
    pool_arith: ArithConfig = field(default_factory=ArithConfig)
    data_dir: Optional[str] = None
    files: Dict[str, SplitSource] = field(default_factory=dict)  # keys: sft, pool, eval


@dataclass
class TrainConfig:
    """One training stage (SFT or a round's rank finetuning)."""

    lr: float = 1e-5
    epochs: float = 1.0
    steps: int = 0  # optimizer steps of the stage, cycling through the items; 0: `epochs` decides
    batch_size: int = 128  # sequences (or groups) per optimizer step, reached by accumulation
    micro_batch_size: int = 8
    warmup_ratio: float = 0.2
    min_lr_ratio: float = 0.0
    max_length: int = 4096  # longer rows are dropped (and counted), never truncated
    optimizer: str = "adamw"  # adamw | adalite
    weight_decay: float = 0.0  # adamw
    adalite_lambda: float = 0.01  # adalite: the pull of each tensor's norm toward 1
    # adalite: "january" (supertrainer2000 0750715, what Memphis-CoT-3B was trained with) or "february"
    adalite_variant: str = "january"
    grad_clip: float = 1.0
    mixce_eta: float = 1.0  # 1.0 is plain cross-entropy
    neftune_alpha: float = 0.0
    freeze_embeddings: bool = False
    log_every: int = 10
    # Optimizer steps between resumable training states (round_k/train_state.pt, deleted once the
    # phase ends); a crash then costs at most this many steps. 0: never saved, a crash restarts the phase.
    save_every: int = 50


@dataclass
class ObjectiveConfig:
    name: str = "memphis"  # memphis | star | spin | cpo_simpo
    rank_weight: float = 5.0  # memphis: w in L = anchor_weight * CE_anchor + w * rank
    anchor_weight: float = 1.0  # memphis: 1 in the recipe; 0 ranks without an anchor (an ablation)
    # memphis: CE anchor on the "gold" rationale and answer, the "chosen" completion, or a "replay" of a
    # gold SFT example (for a pool with answers but no rationales)
    anchor: str = "gold"
    listwise: bool = False  # memphis: each chosen response faces all unique incorrect ones of its question
    beta: float = 1.0  # cpo_simpo: scale of the score gap; spin: DPO beta (recipe: 0.1)
    gamma: float = 0.0  # cpo_simpo: target margin
    alpha: float = 0.2  # cpo_simpo: weight of the NLL on the chosen response
    rationalize: bool = False  # star: retry unsolved questions with the gold answer as a hint


@dataclass
class AverageConfig:
    """Weight averaging across rounds (see rationale_loop/merge.py)."""

    method: str = "none"  # none | slerp | linear
    factor: float = 0.99  # interpolation position from the round's starting weights (0) to its new ones (1)


@dataclass
class GenerateConfig:
    backend: str = "hf"
    n: int = 8
    temperature: float = 0.5
    top_p: float = 0.8
    max_new_tokens: int = 512
    # hf: prompts per generate call (each expands to n sequences); vllm: prompts per engine call, whose
    # results are saved before the next call starts (a crash loses at most one call's work).
    batch_size: int = 64
    # Weights' dtype while generating: "auto" is bf16 where it is faster (a CPU with native bf16, a GPU),
    # else the model's dtype. Training always uses model.dtype.
    dtype: str = "auto"
    # vllm only: the engine's settings, and the interpreter of its worker process (default: this one).
    python: Optional[str] = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: Optional[int] = None
    enforce_eager: bool = False


@dataclass
class VerifyConfig:
    kind: str = "numeric"


@dataclass
class EvalConfig:
    max_new_tokens: int = 512
    batch_size: int = 64


@dataclass
class ReportConfig:
    pairs: int = 50  # pairs shown per round in report.html (the first ones of pairs.jsonl)


@dataclass
class InspectConfig:
    round: Optional[int] = None  # None: the last finished round
    pairs: int = 3  # items per page (pairs, invalid samples or unsolved questions)
    page: int = 1
    question: Optional[str] = None  # only this question id: its samples and pairs
    invalid: bool = False  # show invalid samples (and why) instead of pairs
    unsolved: bool = False  # show questions with no correct sample instead of pairs


@dataclass
class Config:
    run: str = "default"
    rounds: int = 3
    seed: int = 0
    output_root: str = "outputs/runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sft: TrainConfig = field(default_factory=TrainConfig)
    rank: TrainConfig = field(default_factory=TrainConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    average: AverageConfig = field(default_factory=AverageConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    inspect: InspectConfig = field(default_factory=InspectConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # Go on with a run even though the config differs from the one its last finished round ran with.
    force: bool = False
    # Start a new run from a finished round of another: <run dir>/round_<k>. Needed on the first call
    # only: the run records it in fork.json.
    init_from: Optional[str] = None


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)


class ConfigError(ValueError):
    """A config that composes but cannot run; the message names the key."""


def validate(cfg: DictConfig | Config) -> None:
    """Cross-field checks that the schema's types cannot express."""
    for stage in ("sft", "rank"):
        train = cfg[stage] if isinstance(cfg, DictConfig) else getattr(cfg, stage)
        if train.micro_batch_size <= 0 or train.batch_size % train.micro_batch_size:
            raise ConfigError(
                f"{stage}.batch_size ({train.batch_size}) must be a positive multiple of "
                f"{stage}.micro_batch_size ({train.micro_batch_size})"
            )
        if not 0.0 <= train.warmup_ratio < 1.0:
            raise ConfigError(f"{stage}.warmup_ratio must be in [0, 1), got {train.warmup_ratio}")
        if train.adalite_variant not in ("january", "february"):
            raise ConfigError(f"{stage}.adalite_variant must be 'january' or 'february', got {train.adalite_variant!r}")
        if not 0.0 <= train.mixce_eta <= 1.0:
            raise ConfigError(f"{stage}.mixce_eta must be in [0, 1], got {train.mixce_eta}")
    if cfg.generate.n < 1:
        raise ConfigError(f"generate.n must be at least 1, got {cfg.generate.n}")
    if not 0.0 < cfg.generate.top_p <= 1.0:
        raise ConfigError(f"generate.top_p must be in (0, 1], got {cfg.generate.top_p}")
    if cfg.objective.anchor not in ("gold", "chosen", "replay"):
        raise ConfigError(f"objective.anchor must be 'gold', 'chosen' or 'replay', got {cfg.objective.anchor!r}")
    if cfg.objective.rationalize and cfg.objective.name != "star":
        raise ConfigError(f"objective.rationalize is STaR's and needs objective=star, not {cfg.objective.name!r}")
    if cfg.model.source not in ("tiny", "pretrained"):
        raise ConfigError(f"model.source must be 'tiny' or 'pretrained', got {cfg.model.source!r}")
    if cfg.model.source == "pretrained" and not cfg.model.path:
        raise ConfigError("model.path is required when model.source=pretrained")
    if cfg.average.method not in ("none", "slerp", "linear"):
        raise ConfigError(f"average.method must be none, slerp or linear, got {cfg.average.method!r}")
    if not 0.0 <= cfg.average.factor <= 1.0:
        raise ConfigError(f"average.factor must be in [0, 1], got {cfg.average.factor}")
    if cfg.rounds < 0:
        raise ConfigError(f"rounds must be >= 0, got {cfg.rounds}")


def to_container(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


# Keys (and key prefixes) that say what to do now or where files go, not how the run's rounds are made:
# they may change between calls (a run directory may be moved or renamed).
NON_RUN_KEYS = ("rounds", "inspect", "report", "force", "init_from", "run", "output_root", "model.cache_dir")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


def config_differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, ignoring NON_RUN_KEYS."""
    old, new = flatten(previous), flatten(current)
    keys = sorted(set(old) | set(new))
    return [
        f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
        for key in keys
        if not any(key == k or key.startswith(k + ".") for k in NON_RUN_KEYS) and old.get(key, "<absent>") != new.get(key, "<absent>")
    ]
