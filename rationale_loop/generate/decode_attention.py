"""Attention for a decode step (one new token a row) without torch's fused kernel.

With one query a row, torch's CPU scaled_dot_product_attention spends its time on per-(row, head) overhead
and, for grouped-query models, on the keys repeated for every query head; here a row's query heads that
share a key head are one small matrix product against that key head (measured 3-6x faster on the CPU at
128 rows, docs/benchmarks.md). Prompts' passes (many queries) keep transformers' sdpa unchanged."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from rationale_loop.models.attention_switch import switched_attention

NAME = "rationale_loop_decode"


def grouped_decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention interface: query (rows, heads, queries, dim), key and value (rows, key heads,
    positions, dim), sdpa's mask (True or 0 where a position is seen); returns (rows, queries, heads, dim)."""
    if query.shape[2] != 1 or kwargs.get("softcap") or getattr(module, "sinks", None) is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    rows, heads, _, dim = query.shape
    key_heads, positions = key.shape[1], key.shape[2]
    grouped = query.view(rows, key_heads, heads // key_heads, dim)  # query head h reads key head h // group
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float() * (dim**-0.5 if scaling is None else scaling)
    if attention_mask is not None:
        mask = attention_mask[..., -positions:].reshape(rows, 1, 1, positions)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = scores.softmax(dim=-1).to(value.dtype)
    return torch.matmul(weights, value).view(rows, 1, heads, dim), None


AttentionInterface.register(NAME, grouped_decode_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks as sdpa: the prompts' pass goes to sdpa


@contextmanager
def decode_attention(model: PreTrainedModel) -> Iterator[None]:
    """Within the block, a model on the CPU attends through grouped_decode_attention where it used sdpa;
    other implementations (eager), and every model on a GPU (where sdpa's fused kernels were not measured
    against it), are left as they are."""
    if model.device.type != "cpu":
        yield
        return
    with switched_attention(model, "sdpa", NAME):
        yield
