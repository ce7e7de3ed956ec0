"""What every objective shares: the items a round's data becomes, the `Objective` protocol, the
declarations an objective makes of what it needs (`Declared`), the view of its config it is built with
(`Options`) and the registry that names it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import torch

from rationale_loop.config.registry import Registry
from rationale_loop.config.schema import ObjectiveConfig, TrainConfig
from rationale_loop.data.encode import IGNORE_INDEX, Encoder
from rationale_loop.data.formats import ReasoningFormat
from rationale_loop.run.records import Generation, Pair, Problem


@dataclass(frozen=True)
class SFTItem:
    prompt: str
    response: str


@dataclass(frozen=True)
class RankItem:
    """One ranking group: a correct response, its incorrect ones, and the CE anchor's target (under
    `anchor_prompt` when the anchor is another question's, as a replayed SFT example is)."""

    prompt: str
    chosen: str
    rejected: tuple[str, ...]
    anchor: str
    anchor_prompt: str | None = None


@dataclass(frozen=True)
class RoundData:
    """What a round hands its objective: the task's problems, the samples and the mined pairs."""

    problems: Mapping[str, Problem]
    generations: Iterable[Generation]  # may be streamed from generations.jsonl: iterate, don't index
    pairs: Sequence[Pair]
    fmt: ReasoningFormat
    # star with rationalization: correct samples found with the gold answer as a hint; their
    # `prompt` is the prompt without the hint, which is what they are trained on.
    rationalizations: Sequence[Generation] = ()
    sft: Sequence[Problem] = ()  # the SFT set's gold examples, for objective.anchor=replay and spin
    # spin: one sample of the round's starting model per SFT question (sft_generations.jsonl)
    sft_generations: Iterable[Generation] = ()
    seed: int = 0  # the round's seed: which SFT examples are replayed
    # Preference pairs from data= (rendered prompt, chosen, rejected), ranked beside the mined pairs by
    # the pair objectives, each anchored on its chosen reply (it has no gold).
    preferences: Sequence[tuple[str, str, str]] = ()


class Objective(Protocol):
    coefficients: dict[str, float]

    def items(self, data: RoundData) -> list[Any]: ...

    def encode(self, item: Any, encoder: Encoder) -> Any | None: ...

    def collate(self, encoded: list[Any], encoder: Encoder) -> dict[str, Any]: ...

    def units(self, batch: dict[str, Any]) -> dict[str, int]: ...

    def loss_sums(self, model: torch.nn.Module, batch: dict[str, Any], train: TrainConfig) -> dict[str, torch.Tensor]: ...


class Declared:
    """What an objective needs of the rest of the run, declared on its class (the defaults: a
    self-training objective on the round's samples that needs nothing more). config_checks.py checks a
    config against them, task_checks.py the task's data, the loop reads them to plan a round, and
    export.py's model card takes `describe`."""

    # Its schema: the objective.* keys it reads (beside name). It is built with a view of the config that
    # holds these alone (`Options`), and a key of another objective named on the command line is refused.
    options: tuple[str, ...] = ()
    uses_samples = True  # the round samples the pool for it (False: the pool is not sampled)
    samples_sft_questions = False  # the round also samples the SFT set's questions (spin's rejected side)
    trains_on_pairs = False  # a correct and an incorrect sample of one question: needs generate.n >= 2, ranks data='s preference pairs
    token_level = False  # trains on token-level rows, which rank.packing may pack
    rationalizes = False  # reads objective.rationalize (retries unsolved questions with the answer as a hint)

    @classmethod
    def gold_rationales_needed(cls, cfg: Any) -> tuple[str, ...]:
        """The splits (pool, sft) whose questions must have gold rationales under this objective config."""
        return ()

    @classmethod
    def own_options(cls, cfg: Any) -> "Options":
        return Options(cfg, cls.options)

    @classmethod
    def describe(cls, cfg: Any) -> str:
        """One line for the model card: what the rounds train with, under `cfg` (the objective's config)."""
        return str(cfg.name)


class UndeclaredOption(LookupError):
    """An objective read a key its class does not declare in `options`. Not an AttributeError, so that
    getattr(cfg, key, default) cannot hide it."""


class Options:
    """An objective's view of its config: `name` and the keys its class declares, nothing else. Reading
    another key raises, so a declaration that misses a key the code reads fails the first test that
    builds the objective, instead of letting a key of the command line be refused wrongly."""

    def __init__(self, cfg: Any, keys: Sequence[str]):
        self._cfg, self._keys = cfg, frozenset(keys) | {"name"}

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        if key not in self._keys:
            raise UndeclaredOption(f"objective.{key} is read but not declared in the objective's `options` ({sorted(self._keys)})")
        return getattr(self._cfg, key)


OBJECTIVES: Registry[Callable[[ObjectiveConfig], Objective]] = Registry("objective.name")
register = OBJECTIVES.register  # @register("name") over an objective class


def build_objective(cfg: ObjectiveConfig) -> Objective:
    return OBJECTIVES.get(cfg.name)(cfg)


def forward_logits(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def learned_tokens(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
