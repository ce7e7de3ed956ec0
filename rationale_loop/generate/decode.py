"""The hf backend's sampling loop: a batch of prompts decoded over a KV cache, each prompt's n samples
sharing its prompt's forward pass, rows leaving the batch as they finish.

transformers' `generate` keeps every row of a batch until the longest one ends (a finished row goes on
being computed, padded) and runs each prompt's forward pass once per sample. A round samples n answers of
very different lengths per question, so on a CPU most of that work was thrown away (docs/benchmarks.md).

The sampling itself is the recipe's: temperature, then nucleus (top-p) filtering, then one draw from the
renormalized distribution; temperature 0 is greedy.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

# Rows whose nucleus lies within the top this-many tokens are filtered without sorting the whole vocabulary
# (49k entries for SmolLM2, per row and step); the rest take the full sort. Either way the result is exact.
NUCLEUS_CANDIDATES = 256


@dataclass
class Decoded:
    tokens: list[int]  # the sampled tokens, the end token included when the model wrote it
    finish_reason: str  # "stop": the end token or a stop string; "length": max_new_tokens reached


def pick_tokens(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of `logits` (rows x vocabulary): the argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted to the smallest set of most likely tokens whose mass reaches
    top_p (the most likely token always kept)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = (logits.float() / temperature).softmax(dim=-1)
    if top_p >= 1.0:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    # The draw is made among the top candidates only: a draw over the whole vocabulary costs a random
    # number per token (most of a step's time on a CPU, measured), and outside the nucleus the weights are 0.
    k = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    top, top_index = probs.topk(k, dim=-1)  # sorted, most likely first
    # A token is in the nucleus when the mass of the tokens ranked above it is below top_p.
    weights = top.masked_fill((top.cumsum(dim=-1) - top) >= top_p, 0.0)
    tokens = top_index.gather(-1, torch.multinomial(weights, 1, generator=generator)).squeeze(-1)
    if k < probs.shape[-1]:
        for row in (weights[:, -1] > 0).nonzero().flatten().tolist():  # a nucleus wider than the candidates
            ranked, order = probs[row].sort(descending=True)
            wide = ranked.masked_fill((ranked.cumsum(dim=-1) - ranked) >= top_p, 0.0)
            tokens[row] = order[torch.multinomial(wide, 1, generator=generator)]
    return tokens


def _forward_options(model: PreTrainedModel, cache: DynamicCache) -> tuple[dict, dict]:
    """The forward arguments of a step and of the prompts' pass: the KV cache under the name this model's
    forward takes (`cache` in recent transformers, `past_key_values` before), and on the prompts' pass only
    the last position's logits where the model can be told so (a prompt's other logits are never read)."""
    forward = getattr(model, "get_base_model", lambda: model)().forward
    parameters = inspect.signature(forward).parameters
    step = {"cache" if "cache" in parameters else "past_key_values": cache, "use_cache": True}
    return step, {**step, "logits_to_keep": 1} if "logits_to_keep" in parameters else step


def decode_batch(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    end_id: int,
    pad_id: int,
    generator: torch.Generator | None,
    stopped: Callable[[list[int]], bool] | None = None,
) -> list[Decoded]:
    """n samples for each prompt, row `i * n + j` being prompt i's sample j. `stopped(tokens)` says whether a
    row's tokens so far hold a stop string (the row ends there, as at the end token)."""
    device = model.device
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):  # left padding: every row's next token goes in the same column
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    step_options, prompt_options = _forward_options(model, cache)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, **prompt_options).logits[:, -1]
    next_position = positions[:, -1:] + 1
    if n > 1:  # the prompt was read once; its samples share its cache from here on
        cache.batch_repeat_interleave(n)
        logits, mask, next_position = (t.repeat_interleave(n, dim=0) for t in (logits, mask, next_position))
    live = list(range(len(prompts) * n))  # the original row of each row of the batch
    results: list[Decoded | None] = [None] * len(live)
    sampled: list[list[int]] = [[] for _ in live]
    for step in range(max_new_tokens):
        tokens = pick_tokens(logits, temperature, top_p, generator)
        keep = []
        for slot, (row, token) in enumerate(zip(live, tokens.tolist())):
            sampled[row].append(token)
            if token == end_id or (stopped is not None and stopped(sampled[row])):
                results[row] = Decoded(sampled[row], "stop")
            elif step + 1 == max_new_tokens:
                results[row] = Decoded(sampled[row], "length")
            else:
                keep.append(slot)
        if not keep:
            break
        if len(keep) < len(live):  # finished rows leave the batch, and their cache with them
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            tokens, mask, next_position = tokens[index], mask[index], next_position[index]
            live = [live[slot] for slot in keep]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=-1)
        logits = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_position, **step_options).logits[:, -1]
        next_position = next_position + 1
    return [result or Decoded([], "length") for result in results]  # (None only when max_new_tokens is 0)
