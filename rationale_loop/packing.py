"""Padding-free micro-batches for token-level training (train.packing).

A micro-batch holds rows of at most `micro_batch_tokens` tokens together, laid end to end instead of
each being padded to the longest:

    tokens    a a a a | b b | c c c
    position  0 1 2 3 | 0 1 | 0 1 2      (each row starts over)
    sees      its own row, causally

so every token's hidden state is the one it has in its own padded row, and the loss is the padded
path's: a row's first label is never learned from the row before it (it is set to -100, which a prompt
token's label already is). In one row (flash attention) the forward pass spends nothing on padding.

With flash attention a micro-batch is one row, and the restarting position ids alone keep attention
inside each original row: transformers turns them into variable-length (cu_seqlens) kernel calls. With
sdpa or eager attention a block-diagonal causal mask does it, and that attention costs the square of
the packed row's length whatever the mask hides; so there the micro-batch is cut into rows of at most
`width` tokens (the step's longest row: first fit decreasing), each several originals end to end and
padded to the widest, which keeps attention's cost per token that of the padded path.
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


def collate_packed(examples: Sequence[Encoded], width: int = 0) -> dict[str, Any]:
    """Packed rows: input_ids, labels, position_ids, row_of_token (which original row, -1 on padding) and
    attention_mask (1 on real tokens: the training loop counts tokens and padding with it), each [R, W].
    width 0: one row of everything, no padding; else rows of at most `width` tokens (first fit decreasing;
    an original longer than that has a row of its own)."""
    bins: list[list[int]] = []
    fills: list[int] = []
    # Longest first (first fit decreasing): short rows fill the gaps the long ones leave. Where a row sits
    # changes no number: each sees only itself.
    for index in sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids)):
        length = len(examples[index].input_ids)
        if width <= 0:
            place = 0 if bins else None
        else:
            place = next((b for b, fill in enumerate(fills) if fill + length <= width), None)
        if place is None:
            bins.append([])
            fills.append(0)
            place = len(bins) - 1
        bins[place].append(index)
        fills[place] += length
    shape = (len(bins), max(fills, default=0))
    input_ids = torch.zeros(shape, dtype=torch.long)  # padding's id is never seen by a real token
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    rows = torch.full(shape, -1, dtype=torch.long)
    for b, members in enumerate(bins):
        start = 0
        for index in sorted(members):
            example = examples[index]
            length = len(example.input_ids)
            input_ids[b, start : start + length] = torch.tensor(example.input_ids)
            # The first token is not predicted from the previous original's last one.
            labels[b, start + 1 : start + length] = torch.tensor(example.labels[1:], dtype=torch.long)
            positions[b, start : start + length] = torch.arange(length)
            rows[b, start : start + length] = index
            start += length
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions, "row_of_token": rows,
            "attention_mask": (rows >= 0).long()}


def attention_implementation(model: torch.nn.Module) -> str:
    inner = getattr(model, "module", model)  # under DDP, the wrapped model holds the config
    return getattr(getattr(inner, "config", None), "_attn_implementation", None) or "sdpa"


def forward_packed(model: torch.nn.Module, batch: dict[str, Any]) -> Any:
    """The model's output on a packed row, each original row attending to itself only."""
    input_ids = batch["input_ids"]
    positions = batch["position_ids"].to(input_ids.device)
    attention = attention_implementation(model)
    if attention.startswith("flash") and input_ids.size(0) == 1:
        # No mask: transformers reads the restarts of position_ids as sequence boundaries (varlen kernels).
        return model(input_ids=input_ids, position_ids=positions)
    if attention.startswith("flash"):
        raise ValueError("a packed batch cut into rows of a width (for sdpa or eager attention) reached flash attention")
    rows = batch["row_of_token"].to(input_ids.device)
    width = rows.size(1)
    causal = torch.ones((width, width), dtype=torch.bool, device=rows.device).tril()
    query, key = rows.unsqueeze(2), rows.unsqueeze(1)  # [R, W, 1], [R, 1, W]
    # A real token sees its own original's past; padding sees itself only (a query that sees nothing
    # would make softmax NaN).
    sees = causal & (query == key) & (query >= 0)
    sees |= torch.eye(width, dtype=torch.bool, device=rows.device) & (query < 0)
    sees = sees.unsqueeze(1)  # [R, 1, W, W]
    if attention == "eager":  # eager attention adds a float mask; sdpa takes a boolean one as is
        dtype = next(model.parameters()).dtype
        sees = torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill(~sees, torch.finfo(dtype).min)
    elif attention != "sdpa":
        raise ValueError(f"train.packing needs sdpa, eager or flash attention, and the model uses {attention}")
    return model(input_ids=input_ids, attention_mask=sees, position_ids=positions)
