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

from rationale_loop.generate.decode_attention import decode_attention
from rationale_loop.generate.kv_cache import reserve

# Rows whose nucleus lies within the top this-many tokens are filtered without sorting the whole vocabulary
# (49k entries for SmolLM2, per row and step); the rest take the full sort. Either way the result is exact.
NUCLEUS_CANDIDATES = 256
# Rows whose candidates are picked together (pick_tokens): small enough for their float probabilities to stay in cache.
CANDIDATE_ROWS = 16
# A prefix shared by every prompt of a batch shorter than this is read with the rest (its own pass would
# cost more in overhead than it saves).
MIN_SHARED_PREFIX = 8


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
    if top_p >= 1.0:
        return torch.multinomial(_probabilities(logits, temperature), 1, generator=generator).squeeze(-1)
    # The draw is made among the top candidates only: a draw over the whole vocabulary costs a random
    # number per token (most of a step's time on a CPU, measured), and outside the nucleus the weights are 0.
    vocabulary = logits.shape[-1]
    k = min(NUCLEUS_CANDIDATES, vocabulary)
    # Rows a few at a time: a whole batch's float probabilities (128 rows x 49k, 25 MB) are fresh memory at
    # every step, and touching it cost more than the output head's matmul (profiled, docs/benchmarks.md). On a
    # CPU each row's numbers are the same either way (tested); a GPU's topk may break bf16 ties otherwise.
    top, top_index = (torch.cat(parts) for parts in zip(*(_probabilities(rows, temperature).topk(k, dim=-1)
                                                            for rows in logits.split(CANDIDATE_ROWS))))  # most likely first
    # A token is in the nucleus when the mass of the tokens ranked above it is below top_p.
    weights = top.masked_fill((top.cumsum(dim=-1) - top) >= top_p, 0.0)
    tokens = top_index.gather(-1, torch.multinomial(weights, 1, generator=generator)).squeeze(-1)
    if k < vocabulary:
        for row in (weights[:, -1] > 0).nonzero().flatten().tolist():  # a nucleus wider than the candidates
            ranked, order = _probabilities(logits[row], temperature).sort(descending=True)
            wide = ranked.masked_fill((ranked.cumsum(dim=-1) - ranked) >= top_p, 0.0)
            tokens[row] = order[torch.multinomial(wide, 1, generator=generator)]
    return tokens


def _probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return (logits.float() / temperature).softmax(dim=-1)


def _forward_options(model: PreTrainedModel, cache: DynamicCache) -> tuple[dict, dict]:
    """The forward arguments of a step and of the prompts' pass: the KV cache under the name this model's
    forward takes (`cache` in recent transformers, `past_key_values` before), and on the prompts' pass only
    the last position's logits where the model can be told so (a prompt's other logits are never read)."""
    forward = getattr(model, "get_base_model", lambda: model)().forward
    parameters = inspect.signature(forward).parameters
    step = {"cache" if "cache" in parameters else "past_key_values": cache, "use_cache": True}
    return step, {**step, "logits_to_keep": 1} if "logits_to_keep" in parameters else step


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all the prompts share (0 for one prompt, or under MIN_SHARED_PREFIX), leaving
    each prompt at least one token of its own: its last position's logits start its samples."""
    if len(prompts) < 2:
        return 0
    first, shortest = prompts[0], min(len(p) for p in prompts)
    length = 0
    while length < shortest - 1 and all(p[length] == first[length] for p in prompts):
        length += 1
    return length if length >= MIN_SHARED_PREFIX else 0


def _read_prompts(model: PreTrainedModel, prompts: Sequence[Sequence[int]], pad_id: int, cache: DynamicCache, options: dict):
    """The prompts' forward pass into `cache` (the one `options` names): each prompt's last-position logits, its
    attention mask and its next position. The prefix all prompts share (a format's system prompt and turn
    header, a fifth of SmolLM2's SVAMP prompts) is read once, as one row; each prompt's rest follows it,
    left padded: [prefix][padding][rest], the mask hiding the padding and the positions counting past it."""
    device = model.device
    shared = shared_prefix_length(prompts)
    if shared:
        prefix = torch.tensor([list(prompts[0][:shared])], device=device)
        model(input_ids=prefix, attention_mask=torch.ones_like(prefix), **options)
        cache.batch_repeat_interleave(len(prompts))
    rest = [ids[shared:] for ids in prompts]
    width = max(len(ids) for ids in rest)
    input_ids = torch.full((len(rest), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rest), shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    for row, ids in enumerate(rest):  # left padding: every row's next token goes in the same column
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[row, shared + width - len(ids) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)[:, shared:]
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, **options).logits[:, -1]
    return logits, mask, positions[:, -1:] + 1


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
    with decode_attention(model):
        return _decode(model, prompts, n, temperature, top_p, max_new_tokens, end_id, pad_id, generator, stopped)


def _decode(model, prompts, n, temperature, top_p, max_new_tokens, end_id, pad_id, generator, stopped) -> list[Decoded]:
    device = model.device
    cache, step_options, (logits, mask, next_position) = start_batch(model, prompts, n, pad_id, max_new_tokens)
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
        logits, mask, next_position = decode_step(model, tokens, mask, next_position, step_options)
    return [result or Decoded([], "length") for result in results]  # (None only when max_new_tokens is 0)


def start_batch(model: PreTrainedModel, prompts: Sequence[Sequence[int]], n: int, pad_id: int, new_tokens: int):
    """A batch ready for its first draw: the prompts read into a fresh KV cache, each repeated to its n
    sample rows (row `i * n + j` is prompt i's sample j), the cache reserved for `new_tokens` more. Returns
    the cache, a step's forward options and the rows' (last logits, attention mask, next position)."""
    cache = DynamicCache(config=model.config)
    step_options, prompt_options = _forward_options(model, cache)
    logits, mask, next_position = _read_prompts(model, prompts, pad_id, cache, prompt_options)
    if n > 1:  # the prompt was read once; its samples share its cache from here on
        cache.batch_repeat_interleave(n)
        logits, mask, next_position = (t.repeat_interleave(n, dim=0) for t in (logits, mask, next_position))
    reserve(cache, mask.shape[-1] + new_tokens)
    return cache, step_options, (logits, mask, next_position)


def decode_step(model: PreTrainedModel, tokens: torch.Tensor, mask: torch.Tensor, next_position: torch.Tensor, step_options: dict):
    """One token a row through the model: the rows' next logits, mask and position."""
    mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
    logits = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_position, **step_options).logits[:, -1]
    return logits, mask, next_position + 1
