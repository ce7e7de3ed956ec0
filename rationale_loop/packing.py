"""Padding-free micro-batches for token-level training (train.packing).

Rows of one micro-batch are laid end to end in a single row of at most `micro_batch_tokens` tokens,
instead of each being padded to the longest:

    tokens    a a a a | b b | c c c
    position  0 1 2 3 | 0 1 | 0 1 2      (each row starts over)
    sees      its own row, causally

so every token's hidden state is the one it has in its own padded row, and the loss is the padded
path's: a row's first label is never learned from the row before it (it is set to -100, which a prompt
token's label already is). The forward pass spends no compute on padding.

Attention is kept inside each row by a block-diagonal causal mask for sdpa and eager attention (a
[1, 1, N, N] mask built on the device, N the packed length), and by the restarting position ids alone
for flash attention, which transformers turns into variable-length (cu_seqlens) calls.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rationale_loop.encode import Encoded
from rationale_loop.losses import IGNORE_INDEX


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
    """One packed row: input_ids, labels, position_ids and row_of_token, each [1, N]; attention_mask is all
    ones (every position is a real token: the training loop counts tokens and padding with it)."""
    input_ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    rows: list[int] = []
    for row, example in enumerate(examples):
        input_ids += example.input_ids
        # The first token is not predicted from the previous row's last one.
        labels += [IGNORE_INDEX, *example.labels[1:]]
        positions += range(len(example.input_ids))
        rows += [row] * len(example.input_ids)
    as_row = lambda values: torch.tensor(values, dtype=torch.long).unsqueeze(0)  # noqa: E731
    return {"input_ids": as_row(input_ids), "labels": as_row(labels), "position_ids": as_row(positions),
            "row_of_token": as_row(rows), "attention_mask": torch.ones(1, len(input_ids), dtype=torch.long)}


def attention_implementation(model: torch.nn.Module) -> str:
    inner = getattr(model, "module", model)  # under DDP, the wrapped model holds the config
    return getattr(getattr(inner, "config", None), "_attn_implementation", None) or "sdpa"


def forward_packed(model: torch.nn.Module, batch: dict[str, Any]) -> Any:
    """The model's output on a packed row, each original row attending to itself only."""
    input_ids = batch["input_ids"]
    positions = batch["position_ids"].to(input_ids.device)
    attention = attention_implementation(model)
    if attention.startswith("flash"):
        # No mask: transformers reads the restarts of position_ids as sequence boundaries (varlen kernels).
        return model(input_ids=input_ids, position_ids=positions)
    rows = batch["row_of_token"].to(input_ids.device)
    width = rows.size(1)
    causal = torch.ones((width, width), dtype=torch.bool, device=rows.device).tril()
    sees = (causal & (rows.unsqueeze(2) == rows.unsqueeze(1))).unsqueeze(1)  # [1, 1, N, N]
    if attention == "eager":  # eager attention adds a float mask; sdpa takes a boolean one as is
        dtype = next(model.parameters()).dtype
        sees = torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill(~sees, torch.finfo(dtype).min)
    elif attention != "sdpa":
        raise ValueError(f"train.packing needs sdpa, eager or flash attention, and the model uses {attention}")
    return model(input_ids=input_ids, attention_mask=sees, position_ids=positions)
