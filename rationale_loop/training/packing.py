"""Padding-free micro-batches for token-level training (train.packing).

A micro-batch is one row: the rows it holds (at most `micro_batch_tokens` tokens together) laid end to
end instead of each being padded to the longest:

    tokens    a a a a | b b | c c c
    position  0 1 2 3 | 0 1 | 0 1 2      (each row starts over)
    sees      its own row, causally

so every token's hidden state is the one it has in its own padded row, and the loss is the padded
path's: a row's first label is never learned from the row before it (it is set to -100, which a prompt
token's label already is). The forward pass spends nothing on padding, and attention keeps inside each
original row at the cost of that row alone:
- flash attention: transformers reads the restarts of position_ids as row boundaries (varlen kernels);
- sdpa or eager: while packed rows train (`packed_attention`), the model's attention is `SEGMENTED`,
  registered here: causal sdpa on each original row's slice of the packed row. A block-diagonal mask
  over the whole packed row would give the same numbers at the square of the packed length.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from rationale_loop.data.encode import Encoded
from rationale_loop.training.losses import IGNORE_INDEX

#: The attention implementation packed rows train under when the model's is sdpa or eager.
SEGMENTED = "rationale_loop_segmented"


def pack_indices(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices into `lengths`, in order, cut into runs whose lengths sum to at most `budget`; a row longer
    than the budget goes alone. Order kept, so sorted rows stay sorted and the cut is deterministic."""
    groups: list[list[int]] = []
    used = 0
    for index, length in enumerate(lengths):
        if groups and used + length <= budget:
            groups[-1].append(index)
            used += length
        else:
            groups.append([index])
            used = length
    return groups


def collate_packed(examples: Sequence[Encoded]) -> dict[str, Any]:
    """One packed row of the examples, in order: input_ids, labels, position_ids and attention_mask (all
    1: the training loop counts tokens with it), each [1, total]; and row_bounds, where each example
    starts and the total (a tuple, worked out here once rather than read back off the device per forward)."""
    input_ids, labels, positions, bounds = [], [], [], [0]
    for example in examples:
        length = len(example.input_ids)
        input_ids += example.input_ids
        # The first token is not predicted from the previous example's last one.
        labels += [IGNORE_INDEX, *example.labels[1:]][:length]
        positions += range(length)
        bounds.append(bounds[-1] + length)
    batch: dict[str, Any] = {name: torch.tensor([values], dtype=torch.long)
                             for name, values in (("input_ids", input_ids), ("labels", labels), ("position_ids", positions))}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["row_bounds"] = tuple(bounds)
    return batch


def attention_implementation(model: torch.nn.Module) -> str:
    return _config(model)._attn_implementation or "sdpa"


def _config(model: torch.nn.Module) -> Any:
    inner = getattr(model, "module", model)  # under DDP, the wrapped model holds the config
    base = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # under peft, the base model
    return base.config


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
    """SEGMENTED in transformers' tables, once, when a packed row first trains (not at import)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(SEGMENTED, segmented_attention)
    # No mask: the slices are the mask, and building one would cost the square of the packed length.
    AttentionMaskInterface.register(SEGMENTED, lambda *args, **kwargs: None)


@contextmanager
def packed_attention(model: torch.nn.Module) -> Iterator[None]:
    """While the block runs, an sdpa or eager model attends through SEGMENTED (flash attention packs as
    it is). Around a whole training loop, so that activations recomputed in the backward pass
    (gradient checkpointing) see the same attention as the forward pass did."""
    config = _config(model)
    before = attention_implementation(model)
    if before.startswith("flash") or before == SEGMENTED:
        yield
        return
    if before not in ("sdpa", "eager"):
        raise ValueError(f"train.packing needs sdpa, eager or flash attention, and the model uses {before}")
    _register()
    config._attn_implementation = SEGMENTED
    try:
        yield
    finally:
        config._attn_implementation = before


def forward_packed(model: torch.nn.Module, batch: dict[str, Any]) -> Any:
    """The model's output on a packed row, each original row attending to itself only."""
    input_ids = batch["input_ids"]
    positions = batch["position_ids"].to(input_ids.device)
    with packed_attention(model):
        if attention_implementation(model).startswith("flash"):
            # No mask: transformers reads the restarts of position_ids as row boundaries (varlen kernels).
            return model(input_ids=input_ids, position_ids=positions)
        return model(input_ids=input_ids, position_ids=positions, row_bounds=batch["row_bounds"])
