"""Per-token log-probabilities without the full-vocabulary fp32 logits of a whole micro-batch
(train.loss_chunk_tokens).

The plain path keeps [B, T, V] logits (and their fp32 copy and gradient) for every position, prompt and
padding included: with Qwen2.5's 152k vocabulary that is the largest tensor of a step. Here the model
runs up to its final hidden states (the output head replaced by the identity for that one forward, so
that DDP, adapters and gradient checkpointing see the usual call), the states of the learned positions
are picked out, and the head and log-softmax run on `chunk` of them at a time under activation
checkpointing: a chunk's logits exist only while its log-probabilities are computed, and again while
its gradient is, so the peak is one chunk's [chunk, V] instead of the batch's [B, T, V]. The arithmetic
is the plain path's (the same linear layer and cross-entropy, row by row), so loss and gradients agree
up to floating-point summation order.

Not with FSDP or ZeRO-3, which hold the head's weight sharded outside the forward pass.

loss_chunk_tokens=-1 (the default) turns it on where it pays (`chunk_for`): docs/benchmarks.md measured the
chunked path 1.8x faster in SFT and 0.74x the memory with a 32,000-row head, and no different with a 384-row
one, on a CPU.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from rationale_loop.training.losses import IGNORE_INDEX, token_logprobs
from rationale_loop.training.packing import forward_packed
from rationale_loop.training.shared_prompt import forward_logits, response_token_logprobs


#: loss_chunk_tokens=-1: chunks of AUTO_CHUNK tokens where the output head has at least LARGE_HEAD rows.
AUTO, AUTO_CHUNK, LARGE_HEAD = -1, 1024, 16_384


def chunk_for(setting: int, model: torch.nn.Module, sharded: bool) -> int:
    """The chunk a stage trains with: `setting` itself, or for AUTO, AUTO_CHUNK where the model's head
    has a vocabulary of LARGE_HEAD rows or more (the logits are then most of a step's memory and time) and
    its weight is not sharded, else 0 (the plain path)."""
    if setting != AUTO:
        return setting
    return AUTO_CHUNK if head_rows(model) >= LARGE_HEAD and not sharded else 0


def head_rows(model: torch.nn.Module) -> int:
    """The output head's rows (the vocabulary it scores), 0 when it is not a linear layer's weight."""
    weight = getattr(getattr(model, "module", model).get_output_embeddings(), "weight", None)
    return weight.shape[0] if isinstance(weight, torch.Tensor) else 0


def _forward(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The model's `.logits` for a padded or a packed (packing.py) micro-batch."""
    if "row_bounds" in batch:  # packed (packing.collate_packed)
        return forward_packed(model, batch).logits
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@contextmanager
def _head_as_identity(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The output head, made the identity while the block runs: the model's `.logits` are then its final
    hidden states. Only the instance's forward is shadowed; the weights stay where they are."""
    inner = getattr(model, "module", model)  # under DDP, the wrapped model
    head = inner.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise ValueError("loss_chunk_tokens needs a model whose output head is a linear layer")
    head.forward = lambda hidden: hidden
    try:
        yield head
    finally:
        del head.forward


def _chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="none")


def chunked_logprobs(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """log p(target) for each row of hidden [N, H]: [N], fp32. Checkpointed per chunk (non-reentrant:
    it keeps the autocast state and needs no input that requires grad), so no chunk's logits are kept."""
    bias = getattr(head, "bias", None)
    pieces = [checkpoint(_chunk_logprobs, hidden[start : start + chunk], head.weight, bias, targets[start : start + chunk],
                         use_reentrant=False)
              for start in range(0, hidden.size(0), chunk)]
    return torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)


def hidden_states(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.nn.Module]:
    """The final hidden states [B, T, H] of a padded or packed batch, and the head that maps them to logits."""
    with _head_as_identity(model) as head:
        return _forward(model, batch), head


def learned_logprobs(model: torch.nn.Module, batch: dict[str, Any], chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """losses.token_logprobs of the model on the batch: log p of every learned token and the mask of
    learned tokens, [B, T - 1] each. chunk > 0: through chunked_logprobs, on the learned positions only."""
    labels = batch["labels"]
    if chunk <= 0:
        return token_logprobs(_forward(model, batch), labels)
    hidden, head = hidden_states(model, batch)
    targets = labels[:, 1:].to(hidden.device)
    mask = targets != IGNORE_INDEX
    picked = chunked_logprobs(hidden[:, :-1][mask], head, targets[mask], chunk)
    return torch.zeros(targets.shape, dtype=picked.dtype, device=picked.device).masked_scatter(mask, picked), mask


def response_logprobs(model: torch.nn.Module, batch: dict[str, Any], chunk: int = 0) -> torch.Tensor:
    """shared_prompt.response_token_logprobs of the model on a shared-prompt batch: log p of every learned
    token, read at the position that predicts it, [N]. chunk > 0: chunked as above."""
    if chunk <= 0:
        return response_token_logprobs(forward_logits(model, batch), batch)
    with _head_as_identity(model) as head:
        hidden = forward_logits(model, batch)
    flat = hidden.reshape(-1, hidden.size(-1))
    return chunked_logprobs(flat[batch["predictor"].to(flat.device)], head, batch["target"].to(flat.device), chunk)
