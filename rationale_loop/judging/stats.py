"""Counts over a round's samples, accumulated one question at a time (so the pool never has to be in
memory at once), as written to stats.json."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from rationale_loop.run.records import Generation


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
        self.chain: Counter[str] = Counter()  # verify.chain=count or check: steps over every valid sample
        self.chain_samples = 0

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
            if sample.chain is not None:
                self.chain_samples += 1
                self.chain.update(chain_counts(sample.chain))
        self.solved += solved

    def result(self) -> dict[str, Any]:
        chain = {key: self.chain[key] for key in CHAIN_STATS} if self.chain_samples else {}
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
            **chain,
        }


#: What a round's stats.json says of its samples' arithmetic steps, when verify.chain is on. A right
#: answer with a wrong step is what a final-answer verifier would have trained on as correct.
CHAIN_STATS = ("steps_checked", "steps_wrong", "steps_unparsed", "right_answer_wrong_chain")


def chain_counts(chain: dict[str, Any]) -> dict[str, int]:
    """One sample's contribution to CHAIN_STATS, from its record's `chain`."""
    return {"steps_checked": chain["checked"], "steps_wrong": chain["wrong"], "steps_unparsed": chain["unparsed"],
            "right_answer_wrong_chain": int(bool(chain["answer_correct"] and chain["wrong"]))}
