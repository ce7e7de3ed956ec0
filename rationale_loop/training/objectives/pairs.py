"""The pair objectives, each a loss over ranked groups (ranked_groups.py): memphis (the recipe's
length-normalised ranking loss plus a CE anchor), cpo_simpo and iterative RPO, for comparison."""

from __future__ import annotations

from typing import Any

import torch

from rationale_loop.config.schema import TrainConfig
from rationale_loop.training.losses import dpo_loss, rank_loss
from rationale_loop.training.objectives.base import RankItem, RoundData, register
from rationale_loop.training.objectives.ranked_groups import RankedGroups, rank_items


def pairwise_sigmoid_loss(margin: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(margin), cpo_simpo's pairwise ranking loss."""
    return -torch.nn.functional.logsigmoid(margin)


@register("memphis")
class MemphisObjective(RankedGroups):
    """L = CE_anchor + w * rank: the length-normalised ranking loss over each group's responses
    (negatives averaged) plus token-level NLL on the anchor (the gold rationale and answer, or the
    chosen completion)."""

    options = ("rank_weight", "anchor_weight", "anchor", "listwise", *RankedGroups.ranking_options)

    @classmethod
    def gold_rationales_needed(cls, cfg: Any) -> tuple[str, ...]:
        # anchor=gold anchors each pair on its pool question's rationale; replay on SFT examples' (_rank_items)
        return {"gold": ("pool",), "replay": ("sft",)}.get(cfg.anchor, ())

    @classmethod
    def describe(cls, cfg: Any) -> str:
        return (f"Memphis-CoT ranking loss: {cfg.anchor_weight:g} x CE anchor on the {cfg.anchor} response + {cfg.rank_weight:g} x "
                "rank = -log(e^s_c / (e^s_c + mean_j e^s_rj)) over length-normalised log-probabilities")

    @staticmethod
    def terms(cfg: Any) -> dict[str, float]:
        return {"anchor": float(cfg.anchor_weight), "rank": float(cfg.rank_weight)}

    def items(self, data: RoundData) -> list[RankItem]:
        return rank_items(data, self.cfg.anchor, self.cfg.listwise)

    def loss_sums(self, model: torch.nn.Module, batch: dict[str, Any], train: TrainConfig) -> dict[str, torch.Tensor]:
        scores = self.scores(model, batch, train.mixce_eta, train.loss_chunk_tokens)
        chosen, rejected = self.ranked(scores)
        return {"anchor": scores.anchor_nll, "rank": rank_loss(chosen, rejected, scores.mask).sum(), **self.floor_sum(chosen, batch)}


@register("cpo_simpo")
class CpoSimpoObjective(RankedGroups):
    """TRL's CPO trainer with loss_type "simpo", for comparison:
    -log sigmoid(beta * (s_c - s_r) - gamma) + alpha * NLL(chosen), s the length-normalised log-prob.
    With beta 1 and gamma 0 it is memphis on one pair with the anchor on the chosen response, divided
    by w, when alpha = 1 / w."""

    options = ("beta", "gamma", "alpha", *RankedGroups.ranking_options)

    @classmethod
    def describe(cls, cfg: Any) -> str:
        return f"CPO-SimPO (beta {cfg.beta:g}, gamma {cfg.gamma:g}, NLL weight {cfg.alpha:g})"

    @staticmethod
    def terms(cfg: Any) -> dict[str, float]:
        return {"rank": 1.0, "anchor": float(cfg.alpha)}

    def items(self, data: RoundData) -> list[RankItem]:
        return rank_items(data, "chosen")

    def loss_sums(self, model: torch.nn.Module, batch: dict[str, Any], train: TrainConfig) -> dict[str, torch.Tensor]:
        scores = self.scores(model, batch, train.mixce_eta, train.loss_chunk_tokens)
        chosen, rejected = self.ranked(scores)
        margin = self.cfg.beta * (chosen - rejected[:, 0]) - self.cfg.gamma
        return {"rank": pairwise_sigmoid_loss(margin).sum(), "anchor": scores.anchor_nll, **self.floor_sum(chosen, batch)}


@register("rpo")
class RpoObjective(RankedGroups):
    """Iterative RPO (Pang et al. 2024): DPO on the round's mined pairs against the round's starting
    model, plus alpha times the chosen response's NLL over its length:
    -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) - alpha * log pi(c) / |c|, with pi and ref the
    summed log-probabilities (under rank_scope, of the scored tokens). The reference scores are computed
    once per round by `prepare`, before the first update."""

    options = ("beta", "alpha", *RankedGroups.ranking_options)
    length_normalised = False

    @classmethod
    def describe(cls, cfg: Any) -> str:
        return (f"Iterative RPO: DPO (beta {cfg.beta:g}) against the round's starting model + {cfg.alpha:g} x the chosen "
                "response's NLL over its length")

    @staticmethod
    def terms(cfg: Any) -> dict[str, float]:
        return {"dpo": 1.0, "nll": float(cfg.alpha)}

    @property
    def needs_reference(self) -> bool:
        return True

    def items(self, data: RoundData) -> list[RankItem]:
        return rank_items(data, "chosen")

    def units(self, batch: dict[str, Any]) -> dict[str, int]:
        groups = len(batch["group_sizes"])
        return {"dpo": groups, "nll": groups, **({"floor": groups} if self.chosen_floor > 0 else {})}

    def loss_sums(self, model: torch.nn.Module, batch: dict[str, Any], train: TrainConfig) -> dict[str, torch.Tensor]:
        scores = self.scores(model, batch, train.mixce_eta, train.loss_chunk_tokens)
        chosen, rejected = self.ranked(scores)
        reference_chosen = batch["reference_chosen"].to(chosen.device, chosen.dtype)
        reference_rejected = batch["reference_rejected"][:, 0].to(chosen.device, chosen.dtype)
        dpo = dpo_loss(chosen, rejected[:, 0], reference_chosen, reference_rejected, self.cfg.beta)
        nll = -scores.chosen_whole / scores.chosen_whole_tokens.clamp(min=1)
        return {"dpo": dpo.sum(), "nll": nll.sum(), **self.floor_sum(chosen, batch)}
