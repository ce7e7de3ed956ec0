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
- sdpa or eager: while packed rows train, the model's attention is causal sdpa on each original row's
  slice of the packed row (`SEGMENTED`, rationale_loop/training/attention.py).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rationale_loop.data.encode import Encoded
from rationale_loop.training.attention import attention_implementation, training_attention
from rationale_loop.training.losses import IGNORE_INDEX


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


def forward_packed(model: torch.nn.Module, batch: dict[str, Any]) -> Any:
    """The model's output on a packed row, each original row attending to itself only."""
    input_ids = batch["input_ids"]
    positions = batch["position_ids"].to(input_ids.device)
    with training_attention(model, packed=True):
        if attention_implementation(model).startswith("flash"):
            # No mask: transformers reads the restarts of position_ids as row boundaries (varlen kernels).
            return model(input_ids=input_ids, position_ids=positions)
        return model(input_ids=input_ids, position_ids=positions, row_bounds=batch["row_bounds"])
