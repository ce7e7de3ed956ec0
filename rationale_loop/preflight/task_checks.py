"""What the config asks of the task's data, checked once the data is loaded and before any work."""

from __future__ import annotations

from omegaconf import DictConfig

from rationale_loop.config.errors import ConfigError
from rationale_loop.data.tasks import TaskSplits
from rationale_loop.training.objectives import OBJECTIVES
from rationale_loop.judging.verify import is_correct


def check_task_fits_config(cfg: DictConfig, splits: TaskSplits) -> None:
    """What the config asks of the task's data, checked once the data is loaded and before any work:
    the verifier reads every gold answer, and the splits whose gold rationales the objective reads
    (objectives.Declared.gold_rationales_needed) have them."""
    for split, problems in (("pool", splits.pool), ("eval", splits.eval)):
        # Each distinct gold once (the first question that has it): golds repeat a lot, and a verifier
        # such as `math` is slow enough for this to count on a large pool.
        first_with = {}
        for problem in problems:
            first_with.setdefault(problem.answer, problem)
        for problem in first_with.values():
            try:
                readable = is_correct(cfg.verify.kind, problem.answer, problem.answer)
            except ValueError as error:
                readable, why = False, f" ({error})"
            else:
                why = ""
            if not readable:
                raise ConfigError(f"verify.kind={cfg.verify.kind} cannot check the {split} question {problem.id}: its gold answer "
                                  f"{problem.answer!r} does not match itself{why}; pick the verifier that fits task {cfg.task.name}")
    needed = OBJECTIVES.get(cfg.objective.name).gold_rationales_needed(cfg.objective)
    anchor = cfg.objective.anchor
    if "pool" in needed:
        missing = [p.id for p in splits.pool if not p.rationale]
        if missing:
            raise ConfigError(f"objective.anchor={anchor} needs gold rationales, but {len(missing)} pool question(s) have none "
                              f"(e.g. {missing[0]}); use another objective.anchor (such as chosen) for task {cfg.task.name}")
    if "sft" in needed and not any(p.rationale for p in splits.sft):
        raise ConfigError(f"objective.anchor={anchor} needs SFT examples with gold rationales, and the task has none")
