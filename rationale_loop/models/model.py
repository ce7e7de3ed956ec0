"""Load, build and save models and tokenizers.

A model is always handed around as a save_pretrained directory: the tiny default is built once into
the cache (a Llama config with random weights, and a byte-level BPE tokenizer trained on the task's
text) and from then on loaded exactly like a real checkpoint, through AutoModelForCausalLM and
AutoTokenizer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rationale_loop.config.errors import CheckpointError, ConfigError, NonFiniteError
from rationale_loop.config.keys import unknown_choice
from rationale_loop.config.schema import DTYPES, ModelConfig
from rationale_loop.config.paths import remove
from rationale_loop.run.records import fsync_directory

log = logging.getLogger(__name__)

TINY_SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "vocab_size", "max_position_embeddings", "init_seed",
                   "architecture", "num_kv_heads", "tie_embeddings", "rope_theta", "model_vocab_size")
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """A byte-level BPE (so any text round-trips) that splits every digit into its own token, which
    keeps numbers legible to a model that has to do arithmetic on them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(  # its progress, piped, is a few empty lines: shown on a terminal only
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=sys.stderr.isatty(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    bos_id = tokenizer.token_to_id(SPECIAL_TOKENS["bos_token"])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL_TOKENS['bos_token']} $A", special_tokens=[(SPECIAL_TOKENS["bos_token"], bos_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def tiny_model_dir(cfg: ModelConfig, corpus_key: str) -> Path:
    """Cache path keyed by the model shape and the text the tokenizer is trained on."""
    shape = {name: getattr(cfg, name) for name in TINY_SHAPE_KEYS}
    digest = hashlib.sha256(json.dumps([shape, corpus_key], sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.cache_dir) / f"tiny-llama-{digest}"


def build_tiny_model(cfg: ModelConfig, corpus: list[str], corpus_key: str) -> Path:
    """Build the tiny model into the cache unless it is already there; return its directory."""
    target = tiny_model_dir(cfg, corpus_key)
    if (target / "config.json").exists():
        log.info("tiny model: using cached %s", target)
        return target
    log.info("tiny model: building %s (tokenizer trained on %d texts)", target, len(corpus))
    tokenizer = train_tokenizer(corpus, cfg.vocab_size)
    config_class = getattr(transformers, ARCHITECTURES[cfg.architecture])
    config = config_class(
        vocab_size=max(len(tokenizer), cfg.model_vocab_size),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    torch.manual_seed(cfg.init_seed)
    model = AutoModelForCausalLM.from_config(config)
    # Published once: another process of the run (a second machine, a launched worker) may build the same
    # model at the same time; replacing its copy would remove files under a process loading them.
    save_checkpoint(model, tokenizer, target, replace=False)
    return target


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path, replace: bool = True) -> None:
    """save_pretrained into a temporary sibling, then rename: a half-written checkpoint never has the
    final name, so it is never loaded. replace=False: see save_directory."""
    refuse_non_finite_weights(model, target)
    with save_directory(target, replace=replace) as staging, quiet_transformers():
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)


@contextmanager
def save_directory(target: Path, replace: bool = True) -> Iterator[Path]:
    """A staging directory beside `target` to write into; when the block ends, its files are made
    durable and it is renamed to `target` (replacing one that is there). An error leaves `target` as it was.
    replace=False publishes once, for content that is a function of its inputs (a cache): if `target` is
    there by then (another process got there first), it is kept as it is and the staging dropped."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield staging
        for written in staging.rglob("*"):  # durable before the rename makes the directory count as finished
            if written.is_file():
                with written.open("rb") as handle:
                    os.fsync(handle.fileno())
        fsync_directory(staging)
        if replace and (target.exists() or target.is_symlink()):
            remove(target, inside=target.parent)
        try:
            staging.rename(target)  # onto a directory with files in it this fails, atomically
        except OSError:
            if replace or not target.is_dir():
                raise
            log.info("%s was written by another process meanwhile; keeping that one", target)
            shutil.rmtree(staging, ignore_errors=True)
            return
        fsync_directory(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


#: model.architecture's values (source=tiny) -> the transformers config class the tiny model is built from
#: (qwen2: q/k/v biases); config_checks.py checks the name against these keys.
ARCHITECTURES = {"llama": "LlamaConfig", "qwen2": "Qwen2Config"}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:  # config/schema.py DTYPES: the names, each torch's own attribute
        raise ConfigError(unknown_choice("model.dtype", name, DTYPES))
    return getattr(torch, name)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX): there, bf16 generation is
    about twice as fast as fp32 (bench/generation.py); elsewhere it is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocasts_bf16(setting: str, device_type: str) -> bool:
    """Whether a stage whose `mixed_precision` is `setting` trains under bf16 autocast on `device_type`:
    "bf16" always, "auto" where bf16 is native (a GPU with bf16, a CPU with AVX512-BF16 or AMX), "no" never."""
    if setting != "auto":
        return setting == "bf16"
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device_type == "cpu" and cpu_has_fast_bf16()


def generation_dtype(setting: str, model_dtype: str) -> str:
    """`generate.dtype`: "auto" is bfloat16 for fp32 models on a CPU with fast bf16 and on a GPU too,
    otherwise the model's own dtype; any other value is used as given."""
    if setting != "auto":
        torch_dtype(setting)  # validates the name
        return setting
    if model_dtype == "float32" and (torch.cuda.is_available() or cpu_has_fast_bf16()):
        return "bfloat16"
    return model_dtype


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Loading and saving without transformers' progress bars ("Loading weights", "Writing model shards")
    when the output is not a terminal: piped into a log they are debris, not progress. (Plain tqdm bars of
    other libraries are off through TQDM_DISABLE, which the CLI sets before it starts: tqdm reads it once.)"""
    if sys.stderr.isatty() or not transformers.utils.logging.is_progress_bar_enabled():
        yield
        return
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.utils.logging.enable_progress_bar()


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"the tokenizer at {path} does not load: {_first_line(error)}") from error
    if tokenizer.pad_token_id is None:
        # Padding is always masked out, so any id works; EOS is the usual choice for models without one.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str | Path, dtype: str = "float32", trust_remote_code: bool = False) -> PreTrainedModel:
    """Weights from safetensors only (a pickled .bin can run code when loaded), and the model's own
    Python code only when model.trust_remote_code says so."""
    try:
        with quiet_transformers():
            return AutoModelForCausalLM.from_pretrained(
                str(path), dtype=torch_dtype(dtype), use_safetensors=True, trust_remote_code=trust_remote_code
            )
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"the model at {path} does not load: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def refuse_non_finite_weights(model: torch.nn.Module, target: Path) -> None:
    """Never save a NaN or an infinity, as a checkpoint or as a state to resume from: finite losses and
    gradients can still step a weight to infinity (a huge learning rate)."""
    broken = [name for name, tensor in model.state_dict().items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise NonFiniteError(f"not saving {target}: {len(broken)} tensor(s) hold NaN or infinity, first {broken[0]}; "
                             "lower the learning rate")


def load_weights(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a save_pretrained directory, across all its safetensors shards."""
    from safetensors.torch import load_file

    shards = sorted(Path(checkpoint).glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{checkpoint} has no .safetensors weights")
    weights: dict[str, torch.Tensor] = {}
    for shard in shards:
        weights.update(load_file(str(shard)))
    return weights


def freeze_embeddings(model: PreTrainedModel) -> None:
    """Keep the input and output embeddings fixed, as the recipe does for both training stages."""
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None:
            for parameter in module.parameters():
                parameter.requires_grad_(False)


@contextmanager
def neftune(model: PreTrainedModel, alpha: float) -> Iterator[None]:
    """NEFTune: while active, add U(-1, 1) * alpha / sqrt(L * d) noise to the input embeddings of
    forward passes in training mode (d: hidden size; L: the padded sequence length, or in a packed row
    (training/packing.py) each original row's own length, so packing the rows keeps each row's noise
    instead of thinning it by the packed length). A model in eval mode (generation, evaluation) is
    untouched, and nothing is left behind in the saved weights."""
    if alpha <= 0:
        yield
        return
    packed_rows: list[torch.Tensor | None] = [None]  # the current forward's row lengths, when it is packed

    def note_rows(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        packed_rows[0] = packed_row_lengths(kwargs.get("position_ids"))

    def add_noise(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        lengths = packed_rows[0]
        if lengths is None:
            scale = alpha / math.sqrt(output.shape[1] * output.shape[2])
            return output + torch.empty_like(output).uniform_(-scale, scale)
        scales = (alpha / torch.sqrt(lengths.to(torch.float32) * output.shape[2])).repeat_interleave(lengths)
        noise = torch.empty_like(output).uniform_(-1, 1) * scales.to(output)[None, :, None]
        return output + noise

    handles = (model.register_forward_pre_hook(note_rows, with_kwargs=True),
               model.get_input_embeddings().register_forward_hook(add_noise))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def packed_row_lengths(position_ids: torch.Tensor | None) -> torch.Tensor | None:
    """The lengths of the original rows of a packed row ([1, total] positions restarting at 0 for each
    row, training/packing.py's layout), or None for anything else (no positions, or several rows)."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.size(0) != 1:
        return None
    starts = torch.nonzero(position_ids[0] == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        return None
    return torch.diff(torch.tensor([*starts, position_ids.size(1)]))
