"""Tasks: where a run's three splits come from.

A task gives an SFT set (with rationales), a question pool for the rounds (question, gold answer and,
where the source has one, gold rationale) and a held-out evaluation set, disjoint from each other.
Registry keyed by `task.name`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rationale_loop.config import TaskConfig
from rationale_loop.records import Problem


@dataclass(frozen=True)
class TaskSplits:
    sft: list[Problem]
    pool: list[Problem]
    eval: list[Problem]

    def check_disjoint(self, task: str) -> None:
        """Refuse to run if an eval or pool question also appears in training data."""
        sft_questions = {p.question for p in self.sft}
        for name, split in (("pool", self.pool), ("eval", self.eval)):
            leaked = [p.id for p in split if p.question in sft_questions]
            if leaked:
                raise ValueError(f"task {task}: {len(leaked)} {name} question(s) also in the SFT split, e.g. {leaked[:3]}")
        pool_questions = {p.question for p in self.pool}
        leaked = [p.id for p in self.eval if p.question in pool_questions]
        if leaked:
            raise ValueError(f"task {task}: {len(leaked)} eval question(s) also in the pool, e.g. {leaked[:3]}")


def _tiny_arith(cfg: TaskConfig) -> TaskSplits:
    from rationale_loop.data.tiny_arith import ArithSpec, make_splits

    a = cfg.arith
    spec = ArithSpec(a.min_steps, a.max_steps, a.max_start, a.max_operand, a.max_value)
    # Eval first: its questions stay the same whatever the pool and SFT sizes are.
    splits = make_splits(cfg.seed, {"eval": cfg.eval_size, "pool": cfg.pool_size, "sft": cfg.sft_size}, spec)
    return TaskSplits(splits["sft"], splits["pool"], splits["eval"])


TASKS: dict[str, Callable[[TaskConfig], TaskSplits]] = {"tiny_arith": _tiny_arith}


def load_task(cfg: TaskConfig) -> TaskSplits:
    try:
        loader = TASKS[cfg.name]
    except KeyError:
        raise ValueError(f"task.name={cfg.name!r} is unknown; known: {sorted(TASKS)}") from None
    splits = loader(cfg)
    splits.check_disjoint(cfg.name)
    return splits
