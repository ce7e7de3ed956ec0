"""Tasks: where a run's three splits come from.

A task gives an SFT set (with rationales), a question pool for the rounds (question, gold answer and,
where the source has one, gold rationale) and a held-out evaluation set, disjoint from each other.
Registry keyed by `task.source`; a task.source that is a dataset id (openai/gsm8k) reads the public
loaders' splits from the hub instead of files.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from rationale_loop.config.schema import TaskConfig
from rationale_loop.data.public import LOADERS, PARSERS
from rationale_loop.data.rows import load_rows
from rationale_loop.data.tiny_arith import ArithSpec, make_splits
from rationale_loop.config.errors import DataError
from rationale_loop.run.records import Problem
from rationale_loop.config.registry import Registry


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

    def read(split: str, source: Any) -> tuple[Any, str, bool, Callable[[], list[Problem]]]:
        path = Path(source.path)
        if not path.is_absolute():
            path = Path(cfg.data_dir or ".") / path
        if not path.exists():
            raise DataError(f"task.files.{split}.path: {path} does not exist (task.data_dir={cfg.data_dir!r})")
        return path, str(path), path.stem == "test", lambda: LOADERS.get(source.loader)(path)

    return _sliced(cfg, read)


def is_hub_id(source: str) -> bool:
    """task.source names a dataset for `datasets.load_dataset` (a hub id such as openai/gsm8k, or a local
    folder laid out like one) rather than a registered task."""
    return source not in TASKS and "/" in source


def _from_hub(cfg: TaskConfig) -> TaskSplits:
    """Like files, but each split reads the split `task.files.<split>.split` of the dataset task.source
    (its config task.hub_name) through `datasets`, parsed by the same loader's rules, with the same ids
    (the split's name in the file stem's place). A hub test split never feeds a training split."""

    def read(split: str, source: Any) -> tuple[Any, str, bool, Callable[[], list[Problem]]]:
        if not source.split:
            raise DataError(f"task.files.{split}.split is not set: say which split of {cfg.source} the {split} split reads")

        def parse() -> list[Problem]:
            rows = load_rows(cfg.source, source.split, name=cfg.hub_name)
            where = f"{cfg.source}[{source.split}]"
            return PARSERS.get(source.loader, f"task.files.{split}.loader")(((f"{where}[{index}]", dict(row)) for index, row in enumerate(rows)), source.split)

        return (source.loader, source.split), f"{cfg.source}[{source.split}]", source.split == "test", parse

    return _sliced(cfg, read)


def _sliced(cfg: TaskConfig, read: Callable[[str, Any], tuple[Any, str, bool, Callable[[], list[Problem]]]]) -> TaskSplits:
    """The three splits as slices of what `read(split, source)` names: (a key, so a file read twice is
    parsed once; a label for errors; whether it is a test set; how to parse it)."""

    loaded: dict[Any, list[Problem]] = {}
    splits = {}
    for split, size in (("sft", cfg.sft_size), ("pool", cfg.pool_size), ("eval", cfg.eval_size)):
        if split not in cfg.files:
            raise DataError(f"task.files.{split} is missing: say which file the {split} split comes from")
        source = cfg.files[split]
        LOADERS.check(source.loader, f"task.files.{split}.loader")
        key, label, is_test, parse = read(split, source)
        if split != "eval" and is_test:
            raise DataError(f"task.files.{split}: {label} is a test set, which never feeds a training split")
        if key not in loaded:
            loaded[key] = parse()
        items = loaded[key][source.start :]
        splits[split] = items[:size] if size > 0 else items
        if size > 0 and len(splits[split]) < size:
            raise DataError(f"task.{split}_size={size} but {label} has only {len(items)} items from start={source.start}")
    return TaskSplits(splits["sft"], splits["pool"], splits["eval"])


TASKS: Registry[Callable[[TaskConfig], TaskSplits]] = Registry(
    "task.source", {"tiny_arith": _tiny_arith, "files": _from_files}, also="or a dataset id such as openai/gsm8k")


def check_source(source: str) -> None:
    """task.source names a registered task or a dataset id; anything else raises ConfigError."""
    if source not in TASKS and not is_hub_id(source):
        TASKS.check(source)


def load_task(cfg: TaskConfig) -> TaskSplits:
    check_source(cfg.source)
    splits = (TASKS.get(cfg.source) if cfg.source in TASKS else _from_hub)(cfg)
    splits.check_disjoint(cfg.name)
    return splits
