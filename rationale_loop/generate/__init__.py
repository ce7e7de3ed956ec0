"""Generation backends, picked by `generate.backend`: "hf" (transformers, in process) or "vllm"
(vLLM's offline engine, in a child process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rationale_loop.generate.base import Backend, Completion, Sampling
from rationale_loop.registry import Registry

__all__ = ["Backend", "Completion", "Sampling", "BACKENDS", "make_backend"]


def _hf(cfg: Any, checkpoint: Path, dtype: str, batch_size: int, trust_remote_code: bool) -> Backend:
    from rationale_loop.generate.hf import HFBackend
    from rationale_loop.model import generation_dtype, load_model, load_tokenizer

    name = generation_dtype(cfg.dtype, dtype)
    model, tokenizer = load_model(checkpoint, name, trust_remote_code), load_tokenizer(checkpoint, trust_remote_code)
    return HFBackend(model.to(generation_device()), tokenizer, batch_size=batch_size)


def generation_device() -> str:
    """The GPU when there is one: generation and evaluation are most of a round's time."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _vllm(cfg: Any, checkpoint: Path, dtype: str, batch_size: int, trust_remote_code: bool) -> Backend:
    from rationale_loop.generate.vllm import VLLMBackend
    from rationale_loop.model import generation_dtype

    engine = {
        "dtype": generation_dtype(cfg.dtype, dtype),
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "max_model_len": cfg.max_model_len,
        "enforce_eager": cfg.enforce_eager,
        "trust_remote_code": trust_remote_code,
    }
    return VLLMBackend(checkpoint, engine, python=cfg.python, chunk_size=batch_size)


BACKENDS: Registry[Callable[..., Backend]] = Registry("generate.backend", {"hf": _hf, "vllm": _vllm})


def make_backend(cfg: Any, checkpoint: Path, dtype: str, batch_size: int, trust_remote_code: bool = False) -> Backend:
    """The backend named by `cfg.backend` (a GenerateConfig) for the checkpoint on disk, in the
    generation dtype that `cfg.dtype` picks."""
    return BACKENDS.get(cfg.backend)(cfg, Path(checkpoint), dtype, batch_size, trust_remote_code)
