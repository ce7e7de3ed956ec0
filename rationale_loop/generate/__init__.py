"""Generation backends, picked by `generate.backend` (registry in `backends`)."""

from __future__ import annotations

from typing import Any, Callable

from rationale_loop.generate.base import Backend, Completion, Sampling

__all__ = ["Backend", "Completion", "Sampling", "BACKENDS", "make_backend"]


def _hf(model: Any, tokenizer: Any, batch_size: int) -> Backend:
    from rationale_loop.generate.hf import HFBackend

    return HFBackend(model, tokenizer, batch_size=batch_size)


BACKENDS: dict[str, Callable[..., Backend]] = {"hf": _hf}


def make_backend(name: str, **kwargs: Any) -> Backend:
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ValueError(f"generate.backend={name!r} is unknown; known: {sorted(BACKENDS)}") from None
    return factory(**kwargs)
