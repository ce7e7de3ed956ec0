"""Which attention kernel a training forward runs, chosen for the whole training loop (`training_attention`).

- A packed row (train.packing) under sdpa or eager attends through `SEGMENTED`: causal sdpa on each
  original row's slice of the packed row (rationale_loop/training/packing.py lays the rows out). A
  block-diagonal mask over the whole packed row would give the same numbers at the square of its length.
  Flash attention packs as it is: transformers reads the restarts of position_ids as row boundaries.
- On a CPU, half-precision attention runs in float32 (`attend_in_float32`): torch's CPU sdpa kernels run
  a bf16 forward and backward 1.6-2.7x slower than float32 on the same rows, causal or under a mask
  (docs/benchmarks.md, "bf16 attention on a CPU"), which made attention a quarter of a bf16 training step.
  The matmuls around it stay in bf16 under autocast. An sdpa model on a CPU trains through `CPU_SDPA`.
  The price is memory: the float32 query, key and value (and output) a layer keeps for its backward pass
  take twice their bf16 bytes.

Both names stand for what the model was configured with (`attention_implementation` reports that), and
are set only while the block runs, so a saved config never holds them.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from rationale_loop.models.attention_switch import switched_attention

#: The attention implementation packed rows train under when the model's is sdpa or eager.
SEGMENTED = "rationale_loop_segmented"
#: sdpa with half-precision rows attending in float32, for an sdpa model training on a CPU.
CPU_SDPA = "rationale_loop_cpu_sdpa"
HALF_DTYPES = (torch.bfloat16, torch.float16)


def attention_implementation(model: torch.nn.Module) -> str:
    """The attention the model is configured with; sdpa while it trains through CPU_SDPA."""
    name = _config(model)._attn_implementation or "sdpa"
    return "sdpa" if name == CPU_SDPA else name


def _config(model: torch.nn.Module) -> Any:
    return _base(model).config


def _base(model: torch.nn.Module) -> torch.nn.Module:
    inner = getattr(model, "module", model)  # under DDP, the wrapped model holds the config
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # under peft, the base model


def half_precision(query: torch.Tensor) -> torch.dtype | None:
    """The half-precision dtype a CPU attention would run in, if any: autocast's (under autocast the rotary
    embedding leaves query and key in float32 and the value in bf16, and sdpa casts all three down), else
    the query's own."""
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    return dtype if device == "cpu" and dtype in HALF_DTYPES else None


def attend_in_float32(attention: Callable) -> Callable:
    """`attention` (transformers' interface: module, query, key, value, mask, ...) with CPU half-precision
    rows attending in float32, outside autocast (which would cast them straight back down), and answering
    in the dtype they would have had. Anything else passes through unchanged."""

    @functools.wraps(attention)
    def in_float32(module, query, key, value, attention_mask, *args, **kwargs):
        half = half_precision(query)
        if half is None:
            return attention(module, query, key, value, attention_mask, *args, **kwargs)
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()  # an additive mask in the query's dtype
        # Any other float tensor joins the float32 arithmetic too (a position bias is added to the mask).
        kwargs = {name: item.float() if torch.is_tensor(item) and item.is_floating_point() else item
                  for name, item in kwargs.items()}
        with torch.autocast("cpu", enabled=False):
            out, weights = attention(module, query.float(), key.float(), value.float(), attention_mask, *args, **kwargs)
        return out.to(half), weights

    return in_float32


@attend_in_float32
def segmented_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        row_bounds: Sequence[int] | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention interface ([1, heads, T, dim] in, [1, T, heads, dim] out) for a packed row:
    causal attention within each slice row_bounds[i]:row_bounds[i + 1]. Only packed rows reach it."""
    if row_bounds is None or query.size(0) != 1:
        raise ValueError(f"{SEGMENTED} attention reached without a packed row's row_bounds (forward_packed passes them)")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    # split, not slices: split's backward joins the rows' gradients in one cat, where each slice's backward
    # would fill a zero tensor of the whole packed row and add into it (rows x packed length of traffic).
    lengths = [end - start for start, end in zip(row_bounds, row_bounds[1:])]
    pieces = [F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling)
              for q, k, v in zip(query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2))]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


@functools.cache
def _register() -> None:
    """The two names in transformers' tables, once, when a model first trains (not at import)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SEGMENTED, segmented_attention)
    # No mask: the slices are the mask, and building one would cost the square of the packed length.
    AttentionMaskInterface.register(SEGMENTED, lambda *args, **kwargs: None)
    AttentionInterface.register(CPU_SDPA, attend_in_float32(_sdpa))
    AttentionMaskInterface.register(CPU_SDPA, sdpa_mask)


def _sdpa(*args: Any, **kwargs: Any) -> Any:
    """Whatever transformers runs as "sdpa" when called (not when registered: a later override stands)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS["sdpa"](*args, **kwargs)


def _training_name(model: torch.nn.Module, configured: str, packed: bool) -> str:
    """The attention to train with, given the one the model stands for: SEGMENTED for packed rows, CPU_SDPA
    for an sdpa model on a CPU, else its own (flash packs as it is; eager keeps its own arithmetic)."""
    if configured.startswith("flash") or configured == SEGMENTED:
        return configured
    # A model with its own attention code (trust_remote_code) may branch on the name instead of looking the
    # function up in transformers' table: a name of ours would silently send it down another path.
    dispatched = getattr(type(_base(model)), "_supports_attention_backend", False)
    if packed:
        if configured not in ("sdpa", "eager") or not dispatched:
            raise ValueError(f"train.packing needs sdpa, eager or flash attention that transformers dispatches, and the "
                             f"model ({type(_base(model)).__name__}) uses {configured}: set packing=false")
        return SEGMENTED
    on_cpu = next(model.parameters()).device.type == "cpu"
    return CPU_SDPA if configured == "sdpa" and on_cpu and dispatched else configured


@contextmanager
def training_attention(model: torch.nn.Module, packed: bool) -> Iterator[None]:
    """While the block runs, the model attends as `_training_name` says. Around a whole training loop, so that
    activations recomputed in the backward pass (gradient checkpointing) see the same attention as the
    forward pass did."""
    before = _config(model)._attn_implementation_internal
    name = _training_name(model, attention_implementation(model), packed)
    if name == (before or "sdpa"):
        yield
        return
    _register()
    with switched_attention(_base(model), before, name):
        yield
