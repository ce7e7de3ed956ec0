"""SPIN: the SFT set's gold responses preferred to the model's own, with DPO against the round's
starting model."""

from __future__ import annotations

import itertools
from typing import Any

import torch

from rationale_loop.config.schema import ObjectiveConfig, TrainConfig
from rationale_loop.data.encode import Encoder
from rationale_loop.training.losses import dpo_loss, sequence_logprobs
from rationale_loop.training.objectives.base import Declared, RankItem, RoundData, forward_logits, register


@register("spin")
class SpinObjective(Declared):
    """SPIN: the gold response is chosen, the model's own generation rejected, with a DPO loss against
    a frozen reference (the round's starting model):
    -log sigmoid(beta * ((pi_gold - ref_gold) - (pi_gen - ref_gen))), on summed log-probabilities.

    SPIN plays against its SFT data: every question with a gold response, the SFT set's (sampled for
    it in each round: `samples_sft_questions`) and the pool's where the task has them.

    The reference log-probabilities are computed once, before the first update, by `prepare`: the
    same numbers as a frozen copy would give, without holding a second model in memory.
    """

    options = ("beta",)
    samples_sft_questions = True

    @classmethod
    def describe(cls, cfg: Any) -> str:
        return f"SPIN: DPO (beta {cfg.beta:g}) with the SFT set's gold responses chosen, the model's own rejected"

    def __init__(self, cfg: ObjectiveConfig):
        self.cfg = cfg = self.own_options(cfg)
        self.coefficients = {"dpo": 1.0}

    def items(self, data: RoundData) -> list[RankItem]:
        problems = {**{p.id: p for p in data.sft}, **data.problems}
        first_sample = {}
        for sample in itertools.chain(data.generations, data.sft_generations):
            current = first_sample.get(sample.question_id)
            if current is None or sample.sample_index < current.sample_index:
                first_sample[sample.question_id] = sample
        items = []
        for question_id, sample in first_sample.items():
            problem = problems[question_id]
            if not problem.rationale:
                continue  # no gold response to prefer
            gold = data.fmt.response(problem.rationale, problem.answer)
            if sample.completion.strip() != gold.strip():
                items.append(RankItem(sample.prompt, gold, (sample.completion,), gold))
        return items

    def encode(self, item: RankItem, encoder: Encoder) -> list[Any] | None:
        chosen = encoder.encode(item.prompt, item.chosen)
        rejected = encoder.encode(item.prompt, item.rejected[0])
        if chosen is None or rejected is None:
            return None
        return [chosen, rejected, None]  # the last slot takes the reference log-probs

    @torch.no_grad()
    def prepare(self, model: torch.nn.Module, encoded: list[list[Any]], encoder: Encoder, micro_batch_size: int) -> None:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        for start in range(0, len(encoded), micro_batch_size):
            chunk = encoded[start : start + micro_batch_size]
            batch = encoder.collate([e[0] for e in chunk] + [e[1] for e in chunk])
            batch = {k: v.to(device) for k, v in batch.items()}
            sums, _ = sequence_logprobs(forward_logits(model, batch), batch["labels"])
            for i, entry in enumerate(chunk):
                entry[2] = (float(sums[i]), float(sums[len(chunk) + i]))
        model.train(was_training)

    def collate(self, encoded: list[list[Any]], encoder: Encoder) -> dict[str, Any]:
        batch = encoder.collate([e[0] for e in encoded] + [e[1] for e in encoded])
        batch["reference"] = torch.tensor([e[2] for e in encoded], dtype=torch.float64)
        return batch

    def units(self, batch: dict[str, Any]) -> dict[str, int]:
        return {"dpo": len(batch["reference"])}

    def loss_sums(self, model: torch.nn.Module, batch: dict[str, Any], train: TrainConfig) -> dict[str, torch.Tensor]:
        pairs = len(batch["reference"])
        sums, _ = sequence_logprobs(forward_logits(model, batch), batch["labels"])
        reference = batch["reference"].to(sums.device, sums.dtype)
        return {"dpo": dpo_loss(sums[:pairs], sums[pairs:], reference[:, 0], reference[:, 1], self.cfg.beta).sum()}
