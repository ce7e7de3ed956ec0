"""Token-level (Mix)CE objectives: STaR (the model's own correct responses) and SFT continued on the
gold examples, the baseline a round has to beat for the same compute."""

from __future__ import annotations

import itertools
from typing import Any

import torch

from rationale_loop.config.schema import ObjectiveConfig, TrainConfig
from rationale_loop.data.encode import Encoded, Encoder
from rationale_loop.data.templates import ConversationItem
from rationale_loop.training.losses import mixce_token_losses
from rationale_loop.training.objectives.base import Declared, RoundData, SFTItem, learned_tokens, register
from rationale_loop.training.token_loss import learned_logprobs


class SupervisedObjective(Declared):
    """Token-level (Mix)CE on (prompt, response) items: SFT, and the base of rejection-sampling finetuning."""

    coefficients = {"nll": 1.0}
    token_level = True

    def __init__(self, cfg: ObjectiveConfig | None = None):
        self.cfg = None if cfg is None else self.own_options(cfg)

    def items(self, data: RoundData) -> list[SFTItem]:
        raise NotImplementedError("SupervisedObjective trains on items given to it directly")

    def encode(self, item: "SFTItem | ConversationItem", encoder: Encoder) -> Encoded | None:
        if isinstance(item, ConversationItem):
            return encoder.encode_segments(item.segments)
        return encoder.encode(item.prompt, item.response)

    def collate(self, encoded: list[Encoded], encoder: Encoder) -> dict[str, Any]:
        return encoder.collate(encoded)

    def units(self, batch: dict[str, Any]) -> dict[str, int]:
        return {"nll": learned_tokens(batch["labels"])}

    def loss_sums(self, model: torch.nn.Module, batch: dict[str, Any], train: TrainConfig) -> dict[str, torch.Tensor]:
        logprobs, mask = learned_logprobs(model, batch, train.loss_chunk_tokens)  # padded or packed (packing.py)
        return {"nll": mixce_token_losses(logprobs, mask, train.mixce_eta).sum()}


@register("star")
class StarObjective(SupervisedObjective):
    """STaR / rejection-sampling finetuning: plain CE on the model's own correct responses (each unique
    response once), plus, with `rationalize`, the correct responses it found when given the gold answer
    as a hint, trained on without the hint. With `sft_replay`, the SFT set's gold examples join them:
    the round then learns the new questions its samples solved without leaving the worked examples."""

    options = ("rationalize", "sft_replay")
    rationalizes = True

    @classmethod
    def describe(cls, cfg: Any) -> str:
        return "STaR: cross-entropy on the model's own correct responses" + (", with rationalization" if cfg.rationalize else "")

    def __init__(self, cfg: ObjectiveConfig):
        super().__init__(cfg)
        self.rationalize = self.cfg.rationalize
        self.sft_replay = self.cfg.sft_replay

    def items(self, data: RoundData) -> list[SFTItem]:
        seen: set[tuple[str, str]] = set()
        items = []
        for sample in itertools.chain(data.generations, data.rationalizations):
            key = (sample.question_id, sample.completion.strip())
            if sample.correct and key not in seen:
                seen.add(key)
                items.append(SFTItem(sample.prompt, sample.completion))
        if self.sft_replay:
            items += [SFTItem(data.fmt.prompt(p.question), data.fmt.response(p.rationale, p.answer)) for p in data.sft if p.rationale]
        return items


@register("sft")
class ContinuedSFTObjective(SupervisedObjective):
    """No self-training: SFT continued on the SFT set's gold examples, the baseline a round has to beat
    for the same compute. It uses none of the round's samples, so the round samples none
    (`uses_samples`)."""

    uses_samples = False

    @classmethod
    def describe(cls, cfg: Any) -> str:
        return "SFT continued on the SFT set (no self-training)"

    def items(self, data: RoundData) -> list[SFTItem]:
        return [SFTItem(data.fmt.prompt(p.question), data.fmt.response(p.rationale, p.answer)) for p in data.sft if p.rationale]
