"""For the length of a block, a model attends through another registered attention implementation.

transformers looks a layer's attention function up by its config's `_attn_implementation` at every forward,
so switching that name switches the kernel. Both the decode loop (generate/decode_attention.py) and a
training loop (training/attention.py) switch it this way.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def switched_attention(model: torch.nn.Module, replaced: str | None, name: str) -> Iterator[None]:
    """Within the block, every config object the model's modules hold whose attention is `replaced` names
    `name` instead; a sub-model configured otherwise (an eager vision tower) keeps its own. Each name is set
    directly, not through the config's property, whose setter would also overwrite every sub-config, and each
    config gets back exactly what it had (None included)."""
    configs = {id(m.config): m.config for m in model.modules()
               if hasattr(getattr(m, "config", None), "_attn_implementation_internal")}
    switched = [config for config in configs.values() if config._attn_implementation_internal == replaced]
    for config in switched:
        config._attn_implementation_internal = name
    try:
        yield
    finally:
        for config in switched:
            config._attn_implementation_internal = replaced
