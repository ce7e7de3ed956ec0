"""Pair mining, pure Python.

The recipe's rule: per question, take the unique correct responses and the unique incorrect responses
(in sample order) and pair them one to one; whatever is left over on the longer side is discarded, so no
response appears in two pairs. Invalid samples (no rationale, no answer, cut off) are on neither side:
they are not wrong answers, they are not answers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

from rationale_loop.records import Generation, Pair, Problem


@dataclass(frozen=True)
class QuestionSamples:
    """The unique correct and incorrect samples of one question, in sample order."""

    correct: list[Generation]
    incorrect: list[Generation]


def _unique(samples: Iterable[Generation]) -> list[Generation]:
    seen: set[str] = set()
    unique = []
    for sample in samples:
        key = sample.completion.strip()
        if key not in seen:
            seen.add(key)
            unique.append(sample)
    return unique


def split_by_question(generations: Iterable[Generation]) -> dict[str, QuestionSamples]:
    """Group valid samples per question (questions kept in order of first appearance)."""
    grouped: dict[str, list[Generation]] = defaultdict(list)
    for sample in generations:
        grouped[sample.question_id].append(sample)
    result = {}
    for question_id, samples in grouped.items():
        samples = sorted(samples, key=lambda s: s.sample_index)
        result[question_id] = QuestionSamples(
            correct=_unique(s for s in samples if s.valid and s.correct),
            incorrect=_unique(s for s in samples if s.valid and not s.correct),
        )
    return result


def mine_pairs(generations: Iterable[Generation], problems: Mapping[str, Problem]) -> list[Pair]:
    """One-to-one pairs of unique correct (chosen) and unique incorrect (rejected) responses."""
    pairs = []
    for question_id, samples in split_by_question(generations).items():
        problem = problems[question_id]
        for chosen, rejected in zip(samples.correct, samples.incorrect):
            pairs.append(
                Pair(
                    question_id=question_id,
                    prompt=chosen.prompt,
                    chosen=chosen.completion,
                    rejected=rejected.completion,
                    chosen_sample_index=chosen.sample_index,
                    rejected_sample_index=rejected.sample_index,
                    gold_rationale=problem.rationale,
                    gold_answer=problem.answer,
                )
            )
    return pairs
