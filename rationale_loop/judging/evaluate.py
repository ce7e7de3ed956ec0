"""Held-out accuracy: one greedy sample per evaluation question, judged like any other sample."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rationale_loop.data.formats import ReasoningFormat
from rationale_loop.generate.base import Backend, Sampling
from rationale_loop.run.records import Generation, JsonlRecords, Problem, write_jsonl_atomic
from rationale_loop.judging.rollouts import sample_and_judge


def greedy_sampling(max_new_tokens: int, stop: tuple[str, ...], reply_end: str | None) -> Sampling:
    """How a held-out question is asked: one greedy sample, wherever it is generated (in process or by a
    generation worker: the same sampling gives the same bytes)."""
    return Sampling(n=1, temperature=0.0, max_new_tokens=max_new_tokens, stop=stop, reply_end=reply_end)


def evaluate(
    backend: Backend,
    problems: Sequence[Problem],
    fmt: ReasoningFormat,
    verify_kind: str,
    max_new_tokens: int,
    samples_path: Path | None = None,
    stop: tuple[str, ...] = (),
    chain: str = "ignore",
) -> dict[str, float | int]:
    sampling = greedy_sampling(max_new_tokens, stop, fmt.reply_end)
    groups = sample_and_judge(backend, problems, fmt, sampling, verify_kind, desc="evaluate", chain=chain)
    samples = [s for group in groups for s in group]
    samples.sort(key=lambda s: s.question_id)
    if samples_path is not None:
        write_jsonl_atomic(samples_path, samples)
    return accuracy_metrics(samples)


def metrics_from_file(samples_path: Path) -> dict[str, float | int]:
    """The metrics of an evaluation whose samples are already on disk (a resumed round)."""
    return accuracy_metrics(list(JsonlRecords(samples_path, Generation)))


def accuracy_metrics(samples: Sequence[Generation]) -> dict[str, float | int]:
    total = len(samples)
    metrics = {
        "eval_questions": total,
        "eval_accuracy": sum(s.correct for s in samples) / total if total else 0.0,
        "eval_valid": sum(s.valid for s in samples) / total if total else 0.0,
    }
    checked = [s.chain for s in samples if s.chain is not None]
    if checked:
        # with verify.chain=check, eval_accuracy counts a wrong step as a miss; these say both ways apart
        right = sum(c["answer_correct"] for c in checked)
        wrong_chain = sum(bool(c["answer_correct"] and c["wrong"]) for c in checked)
        metrics["eval_answer_accuracy"] = right / total
        metrics["eval_chain_accuracy"] = (right - wrong_chain) / total
        metrics["eval_right_answer_wrong_chain"] = wrong_chain
    return metrics
