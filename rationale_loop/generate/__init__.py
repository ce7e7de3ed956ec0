"""Generation backends, picked by `generate.backend`: "hf" (transformers, in process) or "vllm"
(vLLM's offline engine, in a child process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rationale_loop.generate.base import Backend, Completion, Sampling

__all__ = ["Backend", "Completion", "Sampling", "BACKENDS", "make_backend"]


def _hf(cfg: Any, checkpoint: Path, dtype: str, batch_size: int, model: Any = None, tokenizer: Any = None) -> Backend:
    import copy

    from rationale_loop.generate.hf import HFBackend
    from rationale_loop.model import generation_dtype, load_model, load_tokenizer, torch_dtype

    name = generation_dtype(cfg.dtype, dtype)
    if model is None:
        model, tokenizer = load_model(checkpoint, name), load_tokenizer(checkpoint)
    elif model.dtype != torch_dtype(name):
        # A cast copy: the caller's model (being trained, or to be saved) keeps its own dtype.
        model = copy.deepcopy(model).to(torch_dtype(name))
    return HFBackend(model, tokenizer, batch_size=batch_size)


def _vllm(cfg: Any, checkpoint: Path, dtype: str, batch_size: int, model: Any = None, tokenizer: Any = None) -> Backend:
    from rationale_loop.generate.vllm import VLLMBackend

    from rationale_loop.model import generation_dtype

    engine = {
        "dtype": generation_dtype(cfg.dtype, dtype),
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "max_model_len": cfg.max_model_len,
        "enforce_eager": cfg.enforce_eager,
    }
    return VLLMBackend(checkpoint, engine, python=cfg.python, chunk_size=batch_size)


BACKENDS: dict[str, Callable[..., Backend]] = {"hf": _hf, "vllm": _vllm}


def make_backend(cfg: Any, checkpoint: Path, dtype: str, batch_size: int, model: Any = None, tokenizer: Any = None) -> Backend:
    """The backend named by `cfg.backend` (a GenerateConfig) for the checkpoint on disk. The hf backend
    reuses an already loaded model when given one; vllm always reads the checkpoint directory."""
    try:
        factory = BACKENDS[cfg.backend]
    except KeyError:
        raise ValueError(f"generate.backend={cfg.backend!r} is unknown; known: {sorted(BACKENDS)}") from None
    return factory(cfg, Path(checkpoint), dtype, batch_size, model=model, tokenizer=tokenizer)
