"""Structured config schemas, registered in Hydra's ConfigStore.

`conf/config.yaml` starts its defaults list with `base_config`, so every YAML file and every command-line
override is merged into these dataclasses: a misspelt key or a wrong type fails at the command line,
naming the key. Group defaults carry the recipe's values (docs/recipe.md); `experiment/tiny_arith.yaml`
shrinks them to the embedded default that runs on a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from rationale_loop.config.errors import ConfigError
from rationale_loop.config.paths import RunPathError, fitting_name, run_directory

# The closed sets of the schema's string values, each defined once here: config_checks.py checks a config
# against them and the code that acts on a value reads the same constant. (Sets that a module's table
# defines, such as objectives or optimizers, live in that module's Registry instead.)
MODEL_SOURCES = ("tiny", "pretrained")
DTYPES = ("float32", "bfloat16", "float16")
GENERATE_DTYPES = ("auto", *DTYPES)  # auto: model.generation_dtype picks
ARITH_ANSWERS = ("final", "running")
SPLITS = ("sft", "pool", "eval")
MULTI_FORMATS = ("all", "sample")
CONVERSATION_TOO_LONG = ("drop", "truncate")
MIXED_PRECISION = ("no", "bf16", "auto")  # auto: models.model.autocasts_bf16 decides
ANCHORS = ("gold", "chosen", "replay")
PROMPT_TOO_LONG = ("skip", "error")
#: verify.chain's values: the answer alone decides; steps counted too; a wrong step makes a sample incorrect.
CHAIN_MODES = ("ignore", "count", "check")
#: peft.method -> the peft keys that method reads (none reads none of them): its schema within PeftConfig.
#: A key of another method named on the command line is refused (config_checks.check_option_keys).
LORA_KEYS = ("r", "alpha", "dropout", "target_modules")
PEFT_OPTION_KEYS = {"none": (), "lora": LORA_KEYS, "qlora": LORA_KEYS}
PEFT_METHODS = tuple(PEFT_OPTION_KEYS)


@dataclass
class ModelConfig:
    # "tiny": build (once, then cached) a small Llama-style model and a tokenizer trained on the task's
    # text; "pretrained": load `path`, a local save_pretrained directory or a hub id, or `gguf_file`.
    source: str = "tiny"
    path: Optional[str] = None
    # A GGUF file (a path, or <installed package>:<file in it>), converted once into cache_dir as a plain
    # folder (rationale_loop/models/gguf.py) and loaded from there; instead of `path`.
    gguf_file: Optional[str] = None
    # The model's hub id (owner/name), for an exported model card's base_model when `path` is a local folder
    # or a GGUF file; a local path is never written there.
    hub_id: Optional[str] = None
    cache_dir: str = "outputs/models"
    dtype: str = "float32"
    # Run the Python code a hub model ships with its weights (some architectures need it). Off unless
    # turned on here: that code runs with the user's rights.
    trust_remote_code: bool = False
    # Shape of the tiny model (source=tiny only).
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    vocab_size: int = 384
    max_position_embeddings: int = 256
    init_seed: int = 0
    # More of the shape, for building stand-ins of real models (conf/model/qwen2_5_0_5b_shape.yaml):
    architecture: str = "llama"  # a key of model.ARCHITECTURES: llama, qwen2 (q/k/v biases)
    num_kv_heads: int = 0  # grouped-query attention; 0: as many as num_heads
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    model_vocab_size: int = 0  # the embedding's rows; 0: the trained tokenizer's size (at most vocab_size)


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
    split: Optional[str] = None  # when task.source is a dataset id: the split of it this one reads (train, test, ...)


@dataclass
class TaskConfig:
    name: str = "tiny_arith"
    # "tiny_arith": generated from the seed; "files": each split read from `files` below; a dataset id
    # (openai/gsm8k, or a local folder laid out like a hub dataset): each split read from its `files.<split>.split`.
    source: str = "tiny_arith"
    prompt_format: str = "tinycot"
    # The answer checker this task's gold answers need (verify.py); `verify=task`, the default, uses it,
    # and `verify=<kind>` overrides it.
    verifier: str = "numeric"
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
    hub_name: Optional[str] = None  # the dataset's config when task.source is a dataset id (openai/gsm8k: main)
    files: Dict[str, SplitSource] = field(default_factory=dict)  # keys: sft, pool, eval


@dataclass
class DataSourceConfig:
    """One source of chat or instruction data for the SFT stage (rationale_loop/data/sources.py)."""

    path: str = ""  # a .json/.jsonl/.parquet/.csv file, a save_to_disk folder, or a hub id
    schema: str = "sharegpt"  # sharegpt | messages | alpaca | airoboros | tinycot | gsm8k | text (plain, packed) | preference
    split: str = "train"
    max_rows: int = 0  # the first rows (after `exclude`) only; 0: all
    # schema column -> the file's column, for a file whose columns are named otherwise
    # (e.g. {instruction: post_title, output: comment}); applied before everything else
    columns: Dict[str, str] = field(default_factory=dict)
    # column -> regular expression: a row where it matches is dropped and counted (the recipe's
    # reddit-instruct subset, in YAML: {post_title: '\[|\]'}: no brackets in the title)
    exclude: Dict[str, str] = field(default_factory=dict)
    priority: int = 0  # higher wins when two sources hold the same instruction


@dataclass
class DataConfig:
    """Chat and instruction data mixed into SFT beside the task's reasoning examples."""

    # name -> DataSourceConfig's keys. Typed loosely so that a source can be added on the command line
    # (`+data.sources.mine={path:...,schema:alpaca}`: OmegaConf refuses a plain dict into a dict of
    # dataclasses); `source_configs` fills in the defaults and checks the keys.
    sources: Dict[str, Any] = field(default_factory=dict)
    # Turn templates (rationale_loop/data/templates.py); the first is the checkpoint tokenizer's chat_template.
    formats: List[str] = field(default_factory=lambda: ["memphis"])
    multi_format: str = "all"  # all: every conversation in every format (bagel); sample: one format each, seeded
    decontaminate_ngram: int = 13  # drop a conversation sharing a word n-gram with a held-out question; 0: off
    # drop a conversation whose instruction is a held-out question reworded (MinHash Jaccard estimate); 1.0: off
    near_duplicate_threshold: float = 0.7
    # A sentence-transformers model (a path, or a hub id with a network): drop a conversation whose instruction's
    # cosine similarity to a held-out question reaches embedding_threshold (faiss); null: no embedding check.
    # Needs the `decontam` extra (pip install -e ".[decontam]": sentence-transformers, faiss-cpu).
    embedding_model: Optional[str] = None
    embedding_threshold: float = 0.9
    # More held-out sets to keep out of training beside the task's own (JSON/JSONL/Parquet/CSV files, save_to_disk
    # folders, hub ids read at their test split, `id:config` naming a config), each read from its
    # question/prompt/instruction/problem column.
    decontaminate_against: List[str] = field(default_factory=list)
    # A rendered conversation longer than sft.max_length tokens: drop it (the recipe's choice), or truncate it
    # after its last assistant turn that fits (a multi-turn chat keeps its first exchanges). Counted in the manifest.
    too_long: str = "drop"
    # Sources of schema preference: pairs each round's rank stage trains on beside its mined pairs; 0: all
    # of them every round; n: n per round, the rounds taking turns through a seeded order.
    preference_per_round: int = 0


def source_configs(data: Any) -> dict[str, Any]:
    """data.sources with DataSourceConfig's defaults filled in and its keys and types checked, by name."""
    out = {}
    for name, value in data.sources.items():
        if not isinstance(value, (dict, DictConfig)):
            raise ConfigError(f"data.sources.{name} must be a mapping of {', '.join(f.name for f in fields(DataSourceConfig))}; got {value!r}")
        unknown = sorted(set(value) - {f.name for f in fields(DataSourceConfig)})
        if unknown:
            raise ConfigError(f"data.sources.{name}.{unknown[0]} is not a source key; known: {', '.join(f.name for f in fields(DataSourceConfig))}")
        try:
            out[name] = OmegaConf.merge(OmegaConf.structured(DataSourceConfig), value)
        except ValidationError as error:
            raise ConfigError(f"data.sources.{name}: {str(error).splitlines()[0]}") from None
    return out


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
    # "bf16": forward and backward under bf16 autocast, weights and optimizer state stay in model.dtype
    # (on a GPU, or a CPU with native bf16); "no": model.dtype throughout; "auto": bf16 where the device
    # multiplies bf16 natively (a GPU with bf16, a CPU with AVX512-BF16 or AMX), "no" elsewhere: a CPU
    # without them emulates bf16 matmuls, hundreds of times slower than fp32.
    mixed_precision: str = "no"
    # Recompute activations in the backward pass instead of keeping them: less memory, about a third
    # more compute. Same gradients.
    gradient_checkpointing: bool = False
    # Sort each optimizer step's batch by length before cutting it into micro-batches: less padding, the
    # same gradient (a token-weighted sum over the whole batch). false: the drawn order.
    sort_by_length: bool = True
    # Per-token log-probabilities through the output head and log-softmax on this many learned tokens at a
    # time, recomputed in the backward pass (rationale_loop/training/token_loss.py): the full-vocabulary fp32 logits
    # of a micro-batch are never held. Same loss and gradients. 0: the plain path; -1: chunks of 1024 where
    # the model's vocabulary is 16,384 rows or more (SmolLM2's 49k, Llama's 32k) and the weights are not
    # sharded, the plain path elsewhere (the embedded default's 384-row head).
    loss_chunk_tokens: int = -1
    # Token-level objectives (sft, star): rows laid end to end in micro-batches of at most
    # micro_batch_tokens tokens, one row each, no padding, each original row attending to itself only
    # (rationale_loop/training/packing.py); 0 tokens: micro_batch_size * max_length.
    packing: bool = False
    micro_batch_tokens: int = 0
    log_every: int = 10
    # Optimizer steps between resumable training states (round_k/train_state.pt, deleted once the
    # phase ends); a crash then costs at most this many steps. 0: never saved, a crash restarts the phase.
    save_every: int = 50


@dataclass
class ObjectiveConfig:
    """The keys of every objective in one schema; each objective's class declares the ones it reads
    (`options`, training/objectives/base.py), and a key of another objective named on the command line is refused.
    docs/configuration.md lists which objective reads which key."""

    name: str = "memphis"  # a name of objectives.OBJECTIVES; conf/objective/*.yaml sets it with its options
    rank_weight: float = 5.0  # w in L = anchor_weight * CE_anchor + w * rank
    anchor_weight: float = 1.0  # 1 in the recipe; 0 ranks without an anchor (an ablation)
    # The CE anchor: the "gold" rationale and answer, the "chosen" completion, or a "replay" of a gold SFT
    # example (for a pool with answers but no rationales)
    anchor: str = "gold"
    listwise: bool = False  # each chosen response faces all unique incorrect ones of its question
    beta: float = 1.0  # the scale of a score gap (a DPO beta where the loss is DPO's; the recipe's SPIN: 0.1)
    gamma: float = 0.0  # a target margin on the score gap
    alpha: float = 0.2  # the weight of the chosen response's NLL beside the pair loss
    rationalize: bool = False  # retry unsolved questions with the gold answer as a hint
    # Train on the SFT set's gold examples too, beside the round's correct samples (a replay of the SFT
    # set as training items; a ranked objective's replay is anchor=replay)
    sft_replay: bool = False
    # Forward each group's prompt once with its responses packed behind it, under a mask that keeps them
    # apart (rationale_loop/training/shared_prompt.py); the same scores as one row per response.
    share_prompt: bool = True
    # Against the rank term lowering the chosen responses too (docs/recipe.md, "Likelihood displacement"),
    # each off by default, as the recipe is published. Which tokens a rank score counts: "sequence" (all),
    # "divergent" (past the prefix a response shares with the others of its group), "step" (the first step
    # in which they part; rationale_loop/training/rank_scope.py).
    rank_scope: str = "sequence"
    step_delimiters: List[str] = field(default_factory=lambda: [". ", "\n"])  # where a step ends (rank_scope=step)
    detach_rejected: bool = False  # the rejected scores enter the rank term without gradient
    # DPOP: + chosen_floor * max(0, s_c_start - s_c), s_c_start the chosen score under the round's starting weights
    chosen_floor: float = 0.0


@dataclass
class PeftConfig:
    """Adapters for both training stages (rationale_loop/models/adapters.py): none (full finetuning), lora, or
    qlora (LoRA on a 4-bit base; needs a CUDA GPU and bitsandbytes)."""

    method: str = "none"
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # Module names as the model calls them (Llama, Mistral, Qwen, StableLM), or ["all-linear"]: every
    # linear layer but the output head.
    target_modules: List[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class LaunchConfig:
    """How a round's training phase runs (rationale_loop/phases/launch.py): "local", inside this process; or
    as a worker (`python -m rationale_loop.worker <run> <round>`) started by `accelerate launch` on
    `num_processes` processes: "ddp" (data parallel), "fsdp" (sharded), "deepspeed" (ZeRO). Multi-node
    runs take accelerate's own settings through `config_file` and `extra_args`."""

    kind: str = "local"
    num_processes: int = 2
    # auto: one process per GPU (by local rank) when GPUs are visible, else the CPU over gloo; cuda: GPUs
    # required; cpu: the CPU over gloo even where GPUs are visible.
    device: str = "auto"
    # Several machines (docs/scaling.md): num_processes counts them all; machine 0 runs the run (`make
    # loop`), every other one `make join` with its machine_rank; main_address:main_port is machine 0's.
    num_machines: int = 1
    machine_rank: int = 0
    main_address: Optional[str] = None
    main_port: int = 29500
    config_file: Optional[str] = None  # an `accelerate config` file; its settings apply before extra_args
    extra_args: List[str] = field(default_factory=list)  # more `accelerate launch` flags, as written
    zero_stage: int = 2  # deepspeed only


@dataclass
class AverageConfig:
    """Weight averaging across rounds (see rationale_loop/models/merge.py)."""

    method: str = "none"  # none | slerp | linear
    factor: float = 0.99  # interpolation position from the round's starting weights (0) to its new ones (1)


@dataclass
class GenerateConfig:
    # "auto": vllm where CUDA is available and generate.python's interpreter has vLLM, else hf
    # (rationale_loop/generate/__init__.py); "hf" or "vllm" to choose.
    backend: str = "auto"
    n: int = 8
    temperature: float = 0.5
    top_p: float = 0.8
    max_new_tokens: int = 512
    # Processes that share a round's sampling (rationale_loop/generate/shards.py), started by `accelerate
    # launch`: one engine each, on its own GPU(s) where GPUs are visible, else on the CPU with its share of
    # the cores. The merged generations.jsonl is byte-identical to one process's.
    workers: int = 1
    # hf: prompts per generate call (each expands to n sequences); evaluation's is eval.batch_size.
    batch_size: int = 64
    # vllm: prompts per engine call (sampling and evaluation alike), each call's results saved before the
    # next starts (a crash loses at most one call's work) and seeded on its own. The engine batches
    # within a call by itself (continuous batching), so this is no memory setting.
    chunk_size: int = 512
    # Weights' dtype while generating: "auto" is bf16 where it is faster (a CPU with native bf16, a GPU),
    # else the model's dtype. Training always uses model.dtype.
    dtype: str = "auto"
    # Strings that end a completion where they appear (both backends; the string is not kept), besides
    # the prompt format's own end of turn ("\n### User:"), which always ends it.
    stop: List[str] = field(default_factory=list)
    # vllm only: the engine's settings, and the interpreter of its worker process (default: this one).
    python: Optional[str] = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: Optional[int] = None
    # null: eager on a CPU, compiled (torch.compile and CUDA graphs) on a GPU. On a CPU compiling buys 8-25% of
    # generation speed for 1-2 minutes of engine start a round (docs/benchmarks.md).
    enforce_eager: Optional[bool] = None
    # A prompt whose tokens plus max_new_tokens exceed the model's context: "skip" it (counted in the
    # round's stats and the eval metrics) or "error" (stop, naming the question).
    too_long: str = "skip"


@dataclass
class VerifyConfig:
    kind: str = "numeric"
    # The arithmetic steps of each sample's rationale ("48/2 = 24"), read and checked exactly
    # (rationale_loop/judging/chain/): "ignore" (the answer alone decides), "count" (steps counted and checked
    # in the round's stats, the answer alone decides), "check" (a wrong step makes the sample incorrect).
    chain: str = "ignore"


@dataclass
class EvalConfig:
    max_new_tokens: int = 512
    batch_size: int = 64
    # Held-out accuracy of the base model before SFT (round_00/base_eval.jsonl, answers read from free text):
    # null evaluates a pretrained base and not the tiny model (random weights); true or false to choose.
    base_model: Optional[bool] = None


@dataclass
class ReportConfig:
    pairs: int = 50  # pairs shown per round in report.html (the first ones of pairs.jsonl)


@dataclass
class InspectConfig:
    round: Optional[int] = None  # None: the last finished round
    pairs: int = 3  # pairs per page
    samples: int = 10  # invalid samples (inspect.invalid) or unsolved questions (inspect.unsolved) per page
    page: int = 1
    question: Optional[str] = None  # only this question id: its samples and pairs
    invalid: bool = False  # show invalid samples (and why) instead of pairs
    wrong_chain: bool = False  # show samples with the right answer and a wrong arithmetic step (verify.chain)
    unsolved: bool = False  # show questions with no correct sample instead of pairs
    wide: bool = False  # every column of the terminal's rounds table, however narrow the terminal


@dataclass
class Config:
    run: str = "default"
    rounds: int = 3
    seed: int = 0
    output_root: str = "outputs/runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: TrainConfig = field(default_factory=TrainConfig)
    rank: TrainConfig = field(default_factory=TrainConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
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
    if not OmegaConf.has_resolver("run_directory"):
        OmegaConf.register_new_resolver("run_directory", _run_directory_or_exit)
    if not OmegaConf.has_resolver("fitting_name"):
        # `run=base/${fitting_name:${hydra:job.override_dirname}}`: a sweep job's name, cut to fit a file name
        OmegaConf.register_new_resolver("fitting_name", fitting_name)


def _run_directory_or_exit(output_root: str, run: str) -> str:
    """Hydra's run directory (conf/config.yaml), checked before Hydra creates it. Hydra would print a
    resolver's exception under two screens of traceback; SystemExit passes through it as one line."""
    try:
        return run_directory(output_root, run)
    except RunPathError as error:
        raise SystemExit(f"rationale_loop: error: {error}") from None
