"""Whether a round's ranking reached the weights: how the model scores the round's own pairs.

For every mined pair, the length-normalised log-probabilities s_c and s_r of the chosen and the
rejected response (the recipe's score; TRL logs their means as logps/chosen and logps/rejected), their
margin s_c - s_r (TRL's rewards/margins), and whether the model ranks the pair right (s_c > s_r; TRL's
rewards/accuracies). Measured on the round's starting model and on the model it saves, in eval mode (no
NEFTune), these say whether a round moved the scores it was trained on, whatever the objective; s_c on
its own says whether a round that ranks better also keeps its right answers likely, or lowers both
sides and the chosen one less (a ranking loss has no floor under s_c).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from rationale_loop.data.encode import Encoded, Encoder
from rationale_loop.run.records import Pair
from rationale_loop.training.attention import attention_implementation, training_attention
from rationale_loop.training.shared_prompt import SHARED_MASK_ATTENTION, SharedRow, collate_rows, response_sums
from rationale_loop.training.token_loss import AUTO, chunk_for, learned_logprobs, response_logprobs


Responses = dict[str, dict[tuple[int, ...], Encoded]]  # prompt -> its distinct responses' ids (first-seen order) -> prompt + response


@torch.no_grad()
def pair_scores(model: Any, tokenizer: Any, pairs: Sequence[Pair], max_length: int, batch_size: int = 32,
                reply_end: str = "{eos}", chunk: int = AUTO) -> list[tuple[float, float]]:
    """(s_c, s_r) for every pair whose two sides fit in max_length (longer ones are skipped, as training
    skips them). A prompt's distinct responses are scored together, behind one copy of the prompt
    (shared_prompt.py: each response sees the prompt and itself, so its score is the one it has alone), a
    response in several pairs once, and the output head runs on response tokens only (token_loss.py; `chunk`
    is the stage's loss_chunk_tokens). Done per pair, the prompt (three quarters of a SmolLM2 SVAMP pair's
    tokens) was read twice a pair and the 49k-row head ran on every position: these two passes were most of a
    real-model round's training phase. A model whose attention takes no shared mask gets a row per response."""
    encoder = Encoder(tokenizer, max_length, reply_end)
    responses: Responses = {}
    sides: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    for pair in pairs:
        chosen, rejected = encoder.encode(pair.prompt, pair.chosen), encoder.encode(pair.prompt, pair.rejected)
        if chosen is None or rejected is None:
            continue
        cut = len(encoder.prompt_ids(pair.prompt))
        keys = tuple(tuple(e.input_ids[cut:]) for e in (chosen, rejected))
        found = responses.setdefault(pair.prompt, {})
        for key, encoded in zip(keys, (chosen, rejected)):
            found.setdefault(key, encoded)
        sides.append((pair.prompt, *keys))
    was_training = model.training
    model.eval()
    score = _shared_row_scores if attention_implementation(model) in SHARED_MASK_ATTENTION else _row_per_response_scores
    try:
        with training_attention(model, packed=False):  # the attention the round trains with (float32 on a CPU)
            scores = score(model, encoder, responses, batch_size, chunk_for(chunk, model, sharded=False))
    finally:
        model.train(was_training)
    return [(scores[prompt, chosen], scores[prompt, rejected]) for prompt, chosen, rejected in sides]


def _shared_row_scores(model: Any, encoder: Encoder, responses: Responses, batch_size: int, chunk: int
                       ) -> dict[tuple[str, tuple[int, ...]], float]:
    """Each (prompt, response)'s score, a prompt's responses in shared rows of at most max_length tokens (a
    row's attention costs its width squared; one response always fits, as its pair did), shortest rows first."""
    held: list[tuple[str, SharedRow]] = []
    for prompt, found in responses.items():
        prompt_ids = list(encoder.prompt_ids(prompt))
        row: list[list[int]] = []
        for response in found:
            if row and len(prompt_ids) + sum(map(len, row)) + len(response) > encoder.max_length:
                held.append((prompt, SharedRow(prompt_ids, row)))
                row = []
            row.append(list(response))
        held.append((prompt, SharedRow(prompt_ids, row)))
    held.sort(key=lambda entry: len(entry[1].input_ids))  # the rows of a batch padded to about the same width
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(held), batch_size):
        batch = collate_rows([row for _, row in held[start : start + batch_size]], encoder.pad_id)
        batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
        sums, counts = response_sums(response_logprobs(model, batch, chunk), batch)
        scores.extend((sums / counts.clamp(min=1)).double().cpu().tolist())
    keys = [(prompt, tuple(response)) for prompt, row in held for response in row.responses]  # collate_rows' order
    return dict(zip(keys, scores))


def _row_per_response_scores(model: Any, encoder: Encoder, responses: Responses, batch_size: int, chunk: int
                             ) -> dict[tuple[str, tuple[int, ...]], float]:
    """Each (prompt, response)'s score, every response in a row of its own behind its prompt (plain causal
    attention), shortest rows first."""
    rows = sorted(((prompt, response, encoded) for prompt, found in responses.items() for response, encoded in found.items()),
                  key=lambda row: len(row[2].input_ids))
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(rows), batch_size):
        batch = {key: value.to(device) for key, value in encoder.collate([e for _, _, e in rows[start : start + batch_size]]).items()}
        logprobs, learned = learned_logprobs(model, batch, chunk)  # 0 where not learned
        scores.extend((logprobs.sum(dim=-1) / learned.sum(dim=-1).clamp(min=1)).double().cpu().tolist())
    return dict(zip(((prompt, response) for prompt, response, _ in rows), scores))


def ranking_summary(scores: Sequence[tuple[float, float]], when: str) -> dict[str, float | int | None]:
    """Mean s_c, mean s_r, mean margin, fraction ranked right, and the pairwise rank term
    -log sigmoid(margin) averaged over the pairs, keyed `<name>_<when>` (when: "before" or "after" the
    round's training)."""
    names = ("chosen_score", "rejected_score", "pair_margin", "pairs_ranked_right", "pair_rank_loss")
    if not scores:
        return {f"{name}_{when}": None for name in names}
    count = len(scores)
    margins = [chosen - rejected for chosen, rejected in scores]
    values = (
        sum(chosen for chosen, _ in scores) / count,
        sum(rejected for _, rejected in scores) / count,
        sum(margins) / count,
        sum(m > 0 for m in margins) / count,
        # -log sigmoid(m) = log(1 + e^-m), written to stay finite for large |m|
        sum(max(-m, 0.0) + math.log1p(math.exp(-abs(m))) for m in margins) / count,
    )
    return {f"{name}_{when}": value for name, value in zip(names, values)}


def term_at_ends(history: Sequence[dict[str, float]], term: str) -> dict[str, float | None]:
    """A loss term at the first and the last optimizer step of a training phase (None when the
    objective has no such term)."""
    values = [record[term] for record in history if term in record]
    return {f"{term}_term_first": values[0] if values else None, f"{term}_term_last": values[-1] if values else None}
