"""How a round's data becomes training items, and how a batch of items becomes a loss.

An objective names its loss terms and their coefficients; per micro-batch it returns each term's *sum*
and, before any forward pass, how many units (tokens, groups) each term averages over. The training
loop divides each sum by the unit count of the whole accumulated batch, so a long example weighs the
same whether it shares a micro-batch with short ones or not.

Adding an objective: a class with the methods of `Objective`, decorated with `@register("name")`, and a
YAML file in conf/objective/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch

from rationale_loop.config import ObjectiveConfig, TrainConfig
from rationale_loop.data.formats import ReasoningFormat
from rationale_loop.encode import Encoded, Encoder
from rationale_loop.losses import mixce_token_losses, rank_loss, sequence_logprobs, token_logprobs
from rationale_loop.records import Generation, Pair, Problem


@dataclass(frozen=True)
class SFTItem:
    prompt: str
    response: str


@dataclass(frozen=True)
class RankItem:
    """One ranking group: a correct response, its incorrect ones, and the CE anchor's target."""

    prompt: str
    chosen: str
    rejected: tuple[str, ...]
    anchor: str


@dataclass(frozen=True)
class RoundData:
    """What a round hands its objective: the task's problems, the samples and the mined pairs."""

    problems: Mapping[str, Problem]
    generations: Sequence[Generation]
    pairs: Sequence[Pair]
    fmt: ReasoningFormat


class Objective(Protocol):
    coefficients: dict[str, float]

    def items(self, data: RoundData) -> list[Any]: ...

    def encode(self, item: Any, encoder: Encoder) -> Any | None: ...

    def collate(self, encoded: list[Any], encoder: Encoder) -> dict[str, Any]: ...

    def units(self, batch: dict[str, Any]) -> dict[str, int]: ...

    def loss_sums(self, model: torch.nn.Module, batch: dict[str, Any], train: TrainConfig) -> dict[str, torch.Tensor]: ...


OBJECTIVES: dict[str, Callable[[ObjectiveConfig], Objective]] = {}


def register(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        OBJECTIVES[name] = cls
        return cls

    return add


def build_objective(cfg: ObjectiveConfig) -> Objective:
    try:
        factory = OBJECTIVES[cfg.name]
    except KeyError:
        raise ValueError(f"objective.name={cfg.name!r} is unknown; known: {sorted(OBJECTIVES)}") from None
    return factory(cfg)


def _forward(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def _learned_tokens(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != -100).sum())


class SupervisedObjective:
    """Token-level (Mix)CE on (prompt, response) items: SFT, and the base of rejection-sampling finetuning."""

    coefficients = {"nll": 1.0}

    def __init__(self, cfg: ObjectiveConfig | None = None):
        self.cfg = cfg

    def items(self, data: RoundData) -> list[SFTItem]:
        raise NotImplementedError("SupervisedObjective trains on items given to it directly")

    def encode(self, item: SFTItem, encoder: Encoder) -> Encoded | None:
        return encoder.encode(item.prompt, item.response)

    def collate(self, encoded: list[Encoded], encoder: Encoder) -> dict[str, Any]:
        return encoder.collate(encoded)

    def units(self, batch: dict[str, Any]) -> dict[str, int]:
        return {"nll": _learned_tokens(batch["labels"])}

    def loss_sums(self, model: torch.nn.Module, batch: dict[str, Any], train: TrainConfig) -> dict[str, torch.Tensor]:
        logprobs, mask = token_logprobs(_forward(model, batch), batch["labels"])
        return {"nll": mixce_token_losses(logprobs, mask, train.mixce_eta).sum()}


@register("memphis")
class MemphisObjective:
    """L = CE_anchor + w * rank: the length-normalised ranking loss over each group's responses plus
    token-level NLL on the anchor (the gold rationale and answer, or the chosen completion)."""

    def __init__(self, cfg: ObjectiveConfig):
        self.cfg = cfg
        self.coefficients = {"anchor": 1.0, "rank": float(cfg.rank_weight)}

    def items(self, data: RoundData) -> list[RankItem]:
        items = []
        for pair in data.pairs:
            if self.cfg.anchor == "gold":
                problem = data.problems[pair.question_id]
                if not problem.rationale:
                    raise ValueError(
                        f"objective.anchor=gold needs a gold rationale, but {pair.question_id} has none; "
                        "use objective.anchor=chosen for this task"
                    )
                anchor = data.fmt.response(problem.rationale, problem.answer)
            else:
                anchor = pair.chosen
            items.append(RankItem(pair.prompt, pair.chosen, (pair.rejected,), anchor))
        return items

    def encode(self, item: RankItem, encoder: Encoder) -> tuple[Encoded, list[Encoded], Encoded] | None:
        chosen = encoder.encode(item.prompt, item.chosen)
        rejected = [encoder.encode(item.prompt, r) for r in item.rejected]
        anchor = encoder.encode(item.prompt, item.anchor)
        if chosen is None or anchor is None or any(r is None for r in rejected):
            return None
        return chosen, rejected, anchor  # type: ignore[return-value]

    def collate(self, encoded: list[tuple[Encoded, list[Encoded], Encoded]], encoder: Encoder) -> dict[str, Any]:
        # One forward pass over every sequence of the micro-batch: chosen, then rejected, then anchors.
        chosen = [c for c, _, _ in encoded]
        rejected = [r for _, rs, _ in encoded for r in rs]
        anchors = [a for _, _, a in encoded]
        batch = encoder.collate(chosen + rejected + anchors)
        batch["group_sizes"] = [len(rs) for _, rs, _ in encoded]
        return batch

    def units(self, batch: dict[str, Any]) -> dict[str, int]:
        groups = len(batch["group_sizes"])
        return {"anchor": _learned_tokens(batch["labels"][-groups:]), "rank": groups}

    def loss_sums(self, model: torch.nn.Module, batch: dict[str, Any], train: TrainConfig) -> dict[str, torch.Tensor]:
        sizes = batch["group_sizes"]
        groups, negatives = len(sizes), sum(sizes)
        logits = _forward(model, batch)
        sums, counts = sequence_logprobs(logits[: groups + negatives], batch["labels"][: groups + negatives])
        scores = sums / counts.clamp(min=1)
        chosen_scores = scores[:groups]
        rejected_scores = torch.zeros((groups, max(sizes)), dtype=scores.dtype, device=scores.device)
        rejected_mask = torch.zeros((groups, max(sizes)), dtype=torch.bool, device=scores.device)
        offset = groups
        for g, size in enumerate(sizes):
            rejected_scores[g, :size] = scores[offset : offset + size]
            rejected_mask[g, :size] = True
            offset += size
        anchor_logprobs, _ = token_logprobs(logits[groups + negatives :], batch["labels"][groups + negatives :])
        return {
            "anchor": -anchor_logprobs.sum(),
            "rank": rank_loss(chosen_scores, rejected_scores, rejected_mask).sum(),
        }
