"""The recipe's losses as small pure functions of logits and labels.

Conventions: `labels` has the shape of `input_ids`, with -100 on every position that is not learned
(prompt and padding); the logits at position t predict the token at t + 1. Every function returns sums
and counts rather than means, so that the training loop can weight an accumulated batch by tokens (or
by groups) instead of by micro-batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rationale_loop.data.encode import IGNORE_INDEX


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(y_t | y_<t) for every learned token, and the mask of learned tokens.

    Shapes: logits [B, T, V], labels [B, T] -> both outputs [B, T - 1]. Goes through cross_entropy so
    that the full log-softmax over the vocabulary is never materialised for a large vocabulary.
    """
    shifted_logits = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    nll = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        targets.masked_fill(~mask, 0).reshape(-1),
        reduction="none",
    ).view_as(targets)
    return -nll * mask, mask


def mixce_token_losses(logprobs: torch.Tensor, mask: torch.Tensor, eta: float) -> torch.Tensor:
    """MixCE per token: eta * (-log q) + (1 - eta) * stopgrad(q) * (-log q), zero on masked tokens.

    eta = 1 is plain cross-entropy. The second term is the reverse-CE surrogate: its gradient is the
    gradient of -q, scaled so that confident tokens weigh more.
    """
    nll = -logprobs
    if eta >= 1.0:
        return nll * mask
    q = logprobs.detach().exp()
    return (eta * nll + (1.0 - eta) * q * nll) * mask


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each sequence's learned tokens, and how many there are: [B], [B]."""
    logprobs, mask = token_logprobs(logits, labels)
    return logprobs.sum(dim=1), mask.sum(dim=1)


def rank_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, rejected_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-group ranking loss with averaged negatives, from length-normalised scores s_i.

    rank = -log( e^{s_c} / (e^{s_c} + mean_j e^{s_rj}) )
         = logsumexp([s_c, s_r1 - log K, ..., s_rK - log K]) - s_c

    chosen_scores [G], rejected_scores [G, K] (or [G] for one rejected each), rejected_mask [G, K]
    marks real negatives when groups have different K. With K = 1 this is -log sigmoid(s_c - s_r).
    """
    if rejected_scores.dim() == 1:
        rejected_scores = rejected_scores.unsqueeze(1)
    if rejected_mask is None:
        rejected_mask = torch.ones_like(rejected_scores, dtype=torch.bool)
    counts = rejected_mask.sum(dim=1, keepdim=True).clamp(min=1).to(rejected_scores.dtype)
    negatives = (rejected_scores - counts.log()).masked_fill(~rejected_mask, float("-inf"))
    everything = torch.cat([chosen_scores.unsqueeze(1), negatives], dim=1)
    return torch.logsumexp(everything, dim=1) - chosen_scores


def dpo_loss(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor, reference_rejected: torch.Tensor, beta: float,
) -> torch.Tensor:
    """Per-pair DPO loss from summed log-probabilities under the policy and the frozen reference:
    -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))). SPIN's, and the first term of RPO's."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin)
