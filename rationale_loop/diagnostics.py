"""Whether a round's ranking reached the weights: how the model scores the round's own pairs.

For every mined pair, the margin s_c - s_r between the length-normalised log-probabilities of the
chosen and the rejected response (the recipe's score; TRL logs the same number as rewards/margins), and
whether the model ranks the pair right (s_c > s_r; TRL's rewards/accuracies). Measured on the round's
starting model and on the model it saves, in eval mode (no NEFTune), these say whether a round moved
the scores it was trained on, whatever the objective.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from rationale_loop.encode import Encoder
from rationale_loop.losses import sequence_logprobs
from rationale_loop.records import Pair


@torch.no_grad()
def pair_margins(model: Any, tokenizer: Any, pairs: Sequence[Pair], max_length: int, batch_size: int = 32,
                 reply_end: str = "{eos}") -> list[float]:
    """s_c - s_r for every pair whose two sides fit in max_length (longer ones are skipped, as training
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
    margins: list[float] = []
    try:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            batch = encoder.collate([c for c, _ in chunk] + [r for _, r in chunk])
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
            sums, counts = sequence_logprobs(logits, batch["labels"].to(device))
            scores = (sums / counts.clamp(min=1)).double().cpu()
            margins.extend((scores[: len(chunk)] - scores[len(chunk) :]).tolist())
    finally:
        model.train(was_training)
    return margins


def ranking_summary(margins: Sequence[float], when: str) -> dict[str, float | int | None]:
    """Mean margin, fraction ranked right, and the pairwise rank term -log sigmoid(margin) averaged
    over the pairs, keyed `<name>_<when>` (when: "before" or "after" the round's training)."""
    if not margins:
        return {f"pair_margin_{when}": None, f"pairs_ranked_right_{when}": None, f"pair_rank_loss_{when}": None}
    count = len(margins)
    return {
        f"pair_margin_{when}": sum(margins) / count,
        f"pairs_ranked_right_{when}": sum(m > 0 for m in margins) / count,
        # -log sigmoid(m) = log(1 + e^-m), written to stay finite for large |m|
        f"pair_rank_loss_{when}": sum(max(-m, 0.0) + math.log1p(math.exp(-abs(m))) for m in margins) / count,
    }


def term_at_ends(history: Sequence[dict[str, float]], term: str) -> dict[str, float | None]:
    """A loss term at the first and the last optimizer step of a training phase (None when the
    objective has no such term)."""
    values = [record[term] for record in history if term in record]
    return {f"{term}_term_first": values[0] if values else None, f"{term}_term_last": values[-1] if values else None}
