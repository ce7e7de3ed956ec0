"""Pair mining, pure Python.

The recipe's rule: per question, take the unique correct responses and the unique incorrect responses
(in sample order) and pair them one to one; whatever is left over on the longer side is discarded, so no
response appears in two pairs. Invalid samples (no rationale, no answer, cut off) are on neither side:
they are not wrong answers, they are not answers.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

from rationale_loop.run.records import Generation, Pair, Problem


def _unique(samples: Iterable[Generation]) -> list[Generation]:
    seen: set[str] = set()
    unique = []
    for sample in samples:
        key = sample.completion.strip()
        if key not in seen:
            seen.add(key)
            unique.append(sample)
    return unique


def unique_sides(samples: Iterable[Generation]) -> tuple[list[Generation], list[Generation]]:
    """One question's unique correct and unique (valid) incorrect samples, each in sample order."""
    ordered = sorted(samples, key=lambda s: s.sample_index)
    return (
        _unique(s for s in ordered if s.valid and s.correct),
        _unique(s for s in ordered if s.valid and not s.correct),
    )


def mine_question(samples: Iterable[Generation], problem: Problem) -> list[Pair]:
    """The pairs of one question's samples."""
    correct, incorrect = unique_sides(samples)
    return [
        Pair(
            question_id=problem.id,
            prompt=chosen.prompt,
            chosen=chosen.completion,
            rejected=rejected.completion,
            chosen_sample_index=chosen.sample_index,
            rejected_sample_index=rejected.sample_index,
            gold_rationale=problem.rationale,
            gold_answer=problem.answer,
        )
        for chosen, rejected in zip(correct, incorrect)
    ]


def mine_pairs(generations: Iterable[Generation], problems: Mapping[str, Problem]) -> list[Pair]:
    """One-to-one pairs of unique correct (chosen) and unique incorrect (rejected) responses, for
    samples in any order (questions kept in order of first appearance)."""
    grouped: dict[str, list[Generation]] = defaultdict(list)
    for sample in generations:
        grouped[sample.question_id].append(sample)
    return [pair for question_id, samples in grouped.items() for pair in mine_question(samples, problems[question_id])]
