"""Tasks: where a run's three splits come from.

A task gives an SFT set (with rationales), a question pool for the rounds (question, gold answer and,
where the source has one, gold rationale) and a held-out evaluation set, disjoint from each other.
Registry keyed by `task.source`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from rationale_loop.config import TaskConfig
from rationale_loop.errors import DataError
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
                raise DataError(f"task {task}: {len(leaked)} {name} question(s) also in the SFT split, e.g. {leaked[:3]}")
        pool_questions = {p.question for p in self.pool}
        leaked = [p.id for p in self.eval if p.question in pool_questions]
        if leaked:
            raise DataError(f"task {task}: {len(leaked)} eval question(s) also in the pool, e.g. {leaked[:3]}")


def _tiny_arith(cfg: TaskConfig) -> TaskSplits:
    """STaR's setting: worked rationales are few (the SFT split), questions with a checkable answer are
    many (the pool). Pool and eval problems carry their gold answer only: the generator knows their
    rationales, but the task never hands them out, so no round can learn from one."""
    from rationale_loop.data.tiny_arith import ArithSpec, make_splits

    def spec(a: Any) -> ArithSpec:
        return ArithSpec(a.min_steps, a.max_steps, a.max_start, a.max_operand, a.max_value, a.answer)

    sft_spec = spec(cfg.arith)
    pool_spec = spec(cfg.pool_arith)
    # Eval first: its questions stay the same whatever the pool and SFT sizes are.
    splits = make_splits(cfg.seed, {"eval": cfg.eval_size, "pool": cfg.pool_size, "sft": cfg.sft_size},
                         {"eval": pool_spec, "pool": pool_spec, "sft": sft_spec})
    answers_only = {name: [replace(p, rationale="") for p in splits[name]] for name in ("pool", "eval")}
    return TaskSplits(splits["sft"], answers_only["pool"], answers_only["eval"])


def _from_files(cfg: TaskConfig) -> TaskSplits:
    """Each split is a slice [start, start + size) of a file read by one of the public loaders;
    size 0 or less means to the end of the file. A file named test.jsonl/test.json never feeds a
    training split: evaluation questions are not trained on."""
    from rationale_loop.data.public import LOADERS

    loaded: dict[Path, list[Problem]] = {}
    splits = {}
    for split, size in (("sft", cfg.sft_size), ("pool", cfg.pool_size), ("eval", cfg.eval_size)):
        if split not in cfg.files:
            raise DataError(f"task.files.{split} is missing: say which file the {split} split comes from")
        source = cfg.files[split]
        if source.loader not in LOADERS:
            raise DataError(f"task.files.{split}.loader={source.loader!r} is unknown; known: {sorted(LOADERS)}")
        path = Path(source.path)
        if not path.is_absolute():
            path = Path(cfg.data_dir or ".") / path
        if not path.exists():
            raise DataError(f"task.files.{split}.path: {path} does not exist (task.data_dir={cfg.data_dir!r})")
        if split != "eval" and path.stem == "test":
            raise DataError(f"task.files.{split}.path={path}: a test file never feeds a training split")
        if path not in loaded:
            loaded[path] = LOADERS[source.loader](path)
        items = loaded[path][source.start :]
        splits[split] = items[:size] if size > 0 else items
        if size > 0 and len(splits[split]) < size:
            raise DataError(f"task.{split}_size={size} but {path} has only {len(items)} items from start={source.start}")
    return TaskSplits(splits["sft"], splits["pool"], splits["eval"])


TASKS: dict[str, Callable[[TaskConfig], TaskSplits]] = {"tiny_arith": _tiny_arith, "files": _from_files}


def load_task(cfg: TaskConfig) -> TaskSplits:
    try:
        loader = TASKS[cfg.source]
    except KeyError:
        raise DataError(f"task.source={cfg.source!r} is unknown; known: {sorted(TASKS)}") from None
    splits = loader(cfg)
    splits.check_disjoint(cfg.name)
    return splits
