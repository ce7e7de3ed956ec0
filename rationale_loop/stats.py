"""Counts over a round's samples, accumulated one question at a time (so the pool never has to be in
memory at once), as written to stats.json."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from rationale_loop.records import Generation


class SampleStats:
    def __init__(self, n: int):
        self.n = n
        self.questions = 0
        self.solved = 0
        self.samples = 0
        self.valid = 0
        self.correct = 0
        self.tokens = 0
        self.invalid: Counter[str] = Counter()

    def add_question(self, samples: Iterable[Generation]) -> None:
        self.questions += 1
        solved = False
        for sample in samples:
            self.samples += 1
            self.valid += sample.valid
            self.correct += sample.correct
            self.tokens += sample.num_tokens
            solved = solved or sample.correct
            if sample.invalid_reason:
                self.invalid[sample.invalid_reason] += 1
        self.solved += solved

    def result(self) -> dict[str, Any]:
        return {
            "questions": self.questions,
            "samples": self.samples,
            "valid": self.valid,
            "correct": self.correct,
            "invalid_truncated": self.invalid["truncated"],
            "invalid_no_answer": sum(v for k, v in self.invalid.items() if k != "truncated"),
            "invalid_reasons": dict(sorted(self.invalid.items())),
            "pass_at_n": self.solved / self.questions if self.questions else 0.0,
            "n": self.n,
            "mean_tokens": self.tokens / self.samples if self.samples else 0.0,
        }
