"""Losses against numbers worked out by hand."""

import math

import pytest
import torch

from rationale_loop.training.losses import IGNORE_INDEX, mixce_token_losses, rank_loss, sequence_logprobs, token_logprobs


def test_rank_loss_single_pair_is_minus_log_sigmoid_of_the_score_gap():
    # s_c = -1, s_r = -2: -log(e^-1 / (e^-1 + e^-2)) = -log sigmoid(1) = log(1 + e^-1) = 0.3132616875...
    loss = rank_loss(torch.tensor([-1.0], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-12)
    s_c, s_r = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    torch.testing.assert_close(rank_loss(s_c, s_r), -torch.nn.functional.logsigmoid(s_c - s_r), atol=1e-6, rtol=0)


def test_rank_loss_averages_the_negatives():
    # s_c = 0, negatives s_r = [0, log 3]: mean_j e^{s_rj} = (1 + 3) / 2 = 2,
    # rank = -log(e^0 / (e^0 + 2)) = log 3 = 1.0986122886...
    loss = rank_loss(torch.tensor([0.0], dtype=torch.float64), torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64))
    assert loss.item() == pytest.approx(math.log(3.0), abs=1e-12)


def test_rank_loss_masks_padding_negatives():
    # The second group has one real negative (s_r = 1) and one padding slot that must not count:
    # rank = -log(e^0 / (e^0 + e^1)) = log(1 + e) = 1.3132616875...
    chosen = torch.tensor([0.0, 0.0], dtype=torch.float64)
    rejected = torch.tensor([[0.0, math.log(3.0)], [1.0, 123.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True], [True, False]])
    loss = rank_loss(chosen, rejected, mask)
    assert loss.tolist() == pytest.approx([math.log(3.0), math.log1p(math.e)], abs=1e-12)


def test_sequence_logprobs_sum_only_learned_tokens():
    # Vocabulary of 4 with all-zero logits: every token has log p = log(1/4). Row 0 learns tokens at
    # positions 2 and 3 (2 tokens), row 1 learns positions 1..3 (3 tokens); position 0 is never a target.
    logits = torch.zeros(2, 4, 4)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 2], [IGNORE_INDEX, 3, 0, 1]])
    sums, counts = sequence_logprobs(logits, labels)
    assert counts.tolist() == [2, 3]
    assert sums.tolist() == pytest.approx([2 * math.log(0.25), 3 * math.log(0.25)], abs=1e-6)


def test_token_logprobs_pick_the_label_probability():
    # logits [0, log 3] over a vocabulary of 2: p(token 1) = 3/4, p(token 0) = 1/4.
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    logprobs, mask = token_logprobs(logits, torch.tensor([[IGNORE_INDEX, 1]]))
    assert mask.tolist() == [[True]] and logprobs.item() == pytest.approx(math.log(0.75), abs=1e-6)
    logprobs, _ = token_logprobs(logits, torch.tensor([[IGNORE_INDEX, 0]]))
    assert logprobs.item() == pytest.approx(math.log(0.25), abs=1e-6)


def test_mixce_mixes_forward_ce_with_probability_weighted_ce():
    # q = 0.5: -log q = 0.6931...; eta = 0.75: 0.75 * 0.6931 + 0.25 * 0.5 * 0.6931 = 0.6065...
    logprobs = torch.tensor([[math.log(0.5)]], requires_grad=True)
    mask = torch.tensor([[True]])
    loss = mixce_token_losses(logprobs, mask, eta=0.75)
    assert loss.item() == pytest.approx((0.75 + 0.25 * 0.5) * math.log(2.0), abs=1e-6)
    assert mixce_token_losses(logprobs, mask, eta=1.0).item() == pytest.approx(math.log(2.0), abs=1e-6)
    # The weight q is a constant (stop-gradient): d/dlogq = -(eta + (1 - eta) q) = -(0.875).
    loss.sum().backward()
    assert logprobs.grad.item() == pytest.approx(-0.875, abs=1e-6)
