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

from rationale_loop.data.encode import Encoder
from rationale_loop.training.losses import sequence_logprobs
from rationale_loop.run.records import Pair


@torch.no_grad()
def pair_scores(model: Any, tokenizer: Any, pairs: Sequence[Pair], max_length: int, batch_size: int = 32,
                reply_end: str = "{eos}") -> list[tuple[float, float]]:
    """(s_c, s_r) for every pair whose two sides fit in max_length (longer ones are skipped, as training
    skips them)."""
    encoder = Encoder(tokenizer, max_length, reply_end)
    encoded = []
    for pair in pairs:
        chosen, rejected = encoder.encode(pair.prompt, pair.chosen), encoder.encode(pair.prompt, pair.rejected)
        if chosen is not None and rejected is not None:
            encoded.append((chosen, rejected))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scored: list[tuple[float, float]] = []
    try:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            batch = encoder.collate([c for c, _ in chunk] + [r for _, r in chunk])
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
            sums, counts = sequence_logprobs(logits, batch["labels"].to(device))
            scores = (sums / counts.clamp(min=1)).double().cpu().tolist()
            scored.extend(zip(scores[: len(chunk)], scores[len(chunk) :]))
    finally:
        model.train(was_training)
    return scored


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
