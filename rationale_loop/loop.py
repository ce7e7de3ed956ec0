"""The rounds. Round 0 is SFT; every later round is: generate, verify, mine, train, evaluate, save.

Stages hand off through plain files in the run directory:

    outputs/runs/<run>/
      round_00/  config.yaml  checkpoint/  metrics.json  eval.jsonl  DONE
      round_01/  config.yaml  generations.jsonl  pairs.jsonl  stats.json  checkpoint/  metrics.json  eval.jsonl  DONE
      rounds.jsonl   one line per finished round

A round with DONE is finished and never written again; the next round starts from its checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rationale_loop.config import ConfigError, config_differences, to_container, validate
from rationale_loop.data.formats import ReasoningFormat, get_format
from rationale_loop.data.tasks import TaskSplits, load_task
from rationale_loop.records import (
    Generation,
    JsonlRecords,
    Pair,
    Problem,
    append_jsonl,
    group_by,
    read_jsonl,
    sort_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
)

log = logging.getLogger(__name__)

DONE = "DONE"
ROUND_SUMMARY_KEYS = ("round", "eval_accuracy", "samples", "valid", "correct", "pass_at_n", "pairs", "train_loss")


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.output_root) / cfg.run


def round_dir(run: Path, k: int) -> Path:
    return run / f"round_{k:02d}"


def is_done(run: Path, k: int) -> bool:
    return (round_dir(run, k) / DONE).exists()


def next_round(run: Path) -> int:
    """The first round without DONE; every round before it is finished."""
    k = 0
    while is_done(run, k):
        k += 1
    return k


def describe_next(run: Path) -> str:
    k = next_round(run)
    if k == 0:
        return f"round 0 (SFT): {run} has no finished round"
    partial = round_dir(run, k).exists()
    why = f"round {k - 1} is the last with DONE"
    if partial:
        why += f"; round {k} was started but not finished, so it starts again"
    return f"round {k}: {why}, starting from {round_dir(run, k - 1) / 'checkpoint'}"


class Run:
    """Everything the rounds of one run share: the config, the task's splits, the prompt format."""

    def __init__(self, cfg: DictConfig):
        validate(cfg)
        self.cfg = cfg
        self.dir = run_dir(cfg)
        self.fmt: ReasoningFormat = get_format(cfg.task.prompt_format)
        self.splits: TaskSplits = load_task(cfg.task)
        self.problems: dict[str, Problem] = {p.id: p for p in self.splits.pool}

    # -- one round -------------------------------------------------------------------------------
    def run_round(self, k: int) -> dict[str, Any]:
        if is_done(self.dir, k):
            raise RuntimeError(f"{round_dir(self.dir, k)} is finished (DONE) and is never rewritten")
        if k > 0 and not is_done(self.dir, k - 1):
            raise RuntimeError(f"round {k} needs round {k - 1} finished first ({round_dir(self.dir, k - 1)} has no DONE)")
        if k > 0:
            self._check_config_unchanged(k - 1)
        out = round_dir(self.dir, k)
        if out.exists():
            log.warning("round %d in %s was interrupted; clearing it and starting it again", k, out)
            shutil.rmtree(out)
        out.mkdir(parents=True)
        # Each round keeps its own resolved config: Hydra's .hydra/ is overwritten on every call.
        (out / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
        summary = self._sft(out) if k == 0 else self._self_train(k, out)
        summary["round"] = k
        write_json_atomic(out / "metrics.json", summary)
        (out / DONE).write_text("")
        self._write_rounds_index()
        return summary

    def _sft(self, out: Path) -> dict[str, Any]:
        from rationale_loop.model import load_model, load_tokenizer, save_checkpoint
        from rationale_loop.objectives import SFTItem, SupervisedObjective
        from rationale_loop.train import train

        base = self._base_model_path()
        log.info("round 0 (SFT): base model %s, %d SFT examples", base, len(self.splits.sft))
        model, tokenizer = load_model(base, self.cfg.model.dtype), load_tokenizer(base)
        items = [SFTItem(self.fmt.prompt(p.question), self.fmt.response(p.rationale, p.answer)) for p in self.splits.sft]
        result = train(model, tokenizer, items, SupervisedObjective(), self.cfg.sft, seed=self.cfg.seed, desc="sft")
        save_checkpoint(model, tokenizer, out / "checkpoint")
        metrics = self._evaluate(model, tokenizer, out)
        return {**metrics, "base_model": str(base), **_train_summary(result)}

    def _self_train(self, k: int, out: Path) -> dict[str, Any]:
        from rationale_loop.generate import Sampling, make_backend
        from rationale_loop.mine import mine_question
        from rationale_loop.model import load_model, load_tokenizer, save_checkpoint, torch_dtype
        from rationale_loop.objectives import RoundData, build_objective
        from rationale_loop.rollouts import sample_and_judge
        from rationale_loop.stats import SampleStats
        from rationale_loop.train import train

        start = round_dir(self.dir, k - 1) / "checkpoint"
        log.info("round %d: starting from %s", k, start)
        gen = self.cfg.generate
        sampling = Sampling(gen.n, gen.temperature, gen.top_p, gen.max_new_tokens, seed=self.cfg.seed + k)
        backend = make_backend(gen, start, self.cfg.model.dtype, gen.batch_size)

        # Generate and verify, appending each question's samples as they come; generations.jsonl
        # appears, sorted by question and sample, only once the whole pool is done. Stats and pairs are
        # then computed one question at a time from the file, so memory stays flat as the pool grows.
        partial = out / "generations.jsonl.partial"
        log.info("round %d: sampling %d x %d completions", k, len(self.splits.pool), gen.n)
        for group in sample_and_judge(backend, self.splits.pool, self.fmt, sampling, self.cfg.verify.kind):
            append_jsonl(partial, group)
        sort_jsonl(partial, out / "generations.jsonl", key=lambda row: (row["question_id"], row["sample_index"]))
        partial.unlink()
        generations = JsonlRecords(out / "generations.jsonl", Generation)

        counts = SampleStats(n=gen.n)
        pairs: list[Pair] = []
        solved: set[str] = set()
        for group in group_by(generations, "question_id"):
            counts.add_question(group)
            pairs.extend(mine_question(group, self.problems[group[0].question_id]))
            if any(g.correct for g in group):
                solved.add(group[0].question_id)
        write_jsonl_atomic(out / "pairs.jsonl", pairs)
        stats = counts.result()
        stats["pairs"] = len(pairs)

        objective = build_objective(self.cfg.objective)
        rationalizations: list[Generation] = []
        if getattr(objective, "rationalize", False):
            rationalizations = self._rationalize(backend, solved, sampling)
            write_jsonl_atomic(out / "rationalizations.jsonl", rationalizations)
            stats["rationalized"] = sum(g.correct for g in rationalizations)
        write_json_atomic(out / "stats.json", stats)
        log.info("round %d: %s", k, ", ".join(f"{key} {value}" for key, value in stats.items()))

        items = objective.items(RoundData(self.problems, generations, pairs, self.fmt, rationalizations))
        # Loaded only now: with vLLM, generation ran in its own process and its memory is already free.
        model, tokenizer = getattr(backend, "model", None), getattr(backend, "tokenizer", None)
        if model is None or model.dtype != torch_dtype(self.cfg.model.dtype):
            model, tokenizer = load_model(start, self.cfg.model.dtype), load_tokenizer(start)
        del backend
        result = train(model, tokenizer, items, objective, self.cfg.rank, seed=self.cfg.seed + k, desc=f"round {k}")
        if self.cfg.average.method != "none":
            from rationale_loop.merge import average_into
            from rationale_loop.model import load_weights

            previous = load_weights(start)
            averaged = average_into(model, previous, self.cfg.average.method, self.cfg.average.factor)
            log.info("round %d: %s-averaged %d tensors with %s (factor %.3f toward the new weights)",
                     k, self.cfg.average.method, averaged, start, self.cfg.average.factor)
        save_checkpoint(model, tokenizer, out / "checkpoint")
        metrics = self._evaluate(model, tokenizer, out)
        return {**metrics, **stats, **_train_summary(result)}

    def _rationalize(self, backend: Any, solved: set[str], sampling: Any) -> list[Generation]:
        """STaR's rationalization: ask every question with no correct sample again, the gold answer
        given as a hint; keep the samples that reach it, recorded under the prompt without the hint."""
        from dataclasses import replace

        from rationale_loop.rollouts import judge

        unsolved = [p for p in self.splits.pool if p.id not in solved]
        prompts = [self.fmt.hinted_prompt(p.question, p.answer) for p in unsolved]
        log.info("rationalization: %d unsolved questions asked again with the answer as a hint", len(unsolved))
        kept = []
        for index, completions in backend.generate(prompts, sampling):
            problem = unsolved[index]
            for sample_index, completion in enumerate(completions):
                sample = judge(problem, prompts[index], sample_index, completion, self.fmt, self.cfg.verify.kind)
                if sample.correct:
                    kept.append(replace(sample, prompt=self.fmt.prompt(problem.question)))
        return sorted(kept, key=lambda g: (g.question_id, g.sample_index))

    # -- helpers -----------------------------------------------------------------------------------
    def _check_config_unchanged(self, previous: int) -> None:
        """Refuse to go on with a config that differs from the last finished round's, naming the keys,
        unless force=true: a run's rounds should be one recipe, and a silent change is a lost one."""
        saved = OmegaConf.to_container(OmegaConf.load(round_dir(self.dir, previous) / "config.yaml"))
        differences = config_differences(saved, to_container(self.cfg))
        if not differences:
            return
        listing = "\n  ".join(differences)
        if self.cfg.force:
            log.warning("going on with a changed config (force=true):\n  %s", listing)
            return
        raise ConfigError(
            f"the config differs from the one {round_dir(self.dir, previous)} ran with:\n  {listing}\n"
            "go back to it, start a new run (run=NAME), or pass force=true to go on anyway"
        )

    def _base_model_path(self) -> Path | str:
        model_cfg = self.cfg.model
        if model_cfg.source == "pretrained":
            return model_cfg.path
        from hashlib import sha256

        from rationale_loop.model import build_tiny_model

        corpus = [self.fmt.prompt(p.question) + self.fmt.response(p.rationale, p.answer) for p in self.splits.sft]
        key = sha256("\n".join(corpus).encode()).hexdigest()
        return build_tiny_model(model_cfg, corpus, key)

    def _evaluate(self, model: Any, tokenizer: Any, out: Path) -> dict[str, Any]:
        from rationale_loop.evaluate import evaluate
        from rationale_loop.generate import make_backend

        backend = make_backend(self.cfg.generate, out / "checkpoint", self.cfg.model.dtype, self.cfg.eval.batch_size, model=model, tokenizer=tokenizer)
        metrics = evaluate(backend, self.splits.eval, self.fmt, self.cfg.verify.kind, self.cfg.eval.max_new_tokens, out / "eval.jsonl")
        log.info("held-out accuracy %.3f (%d questions, %.3f valid)", metrics["eval_accuracy"], metrics["eval_questions"], metrics["eval_valid"])
        return metrics

    def _write_rounds_index(self) -> None:
        """rounds.jsonl is derived from the finished rounds' metrics, rebuilt whole each time, so a
        crash can neither duplicate nor drop a line."""
        rows = []
        k = 0
        while is_done(self.dir, k):
            metrics = json.loads((round_dir(self.dir, k) / "metrics.json").read_text())
            rows.append({key: metrics.get(key) for key in ROUND_SUMMARY_KEYS})
            k += 1
        write_jsonl_atomic(self.dir / "rounds.jsonl", rows)


def _train_summary(result: Any) -> dict[str, Any]:
    data = asdict(result)
    history = data.pop("history")
    return {
        "train_loss": data["mean_loss"],
        "train_items": data["items"],
        "train_dropped_too_long": data["dropped_too_long"],
        "train_steps": data["steps"],
        "train_seconds": round(data["seconds"], 2),
        "train_history": history,
    }


def run_next_round(cfg: DictConfig) -> dict[str, Any]:
    run = Run(cfg)
    k = next_round(run.dir)
    print(f"[rationale_loop] run {run.dir}: next is {describe_next(run.dir)}", flush=True)
    if k > cfg.rounds:
        print(f"[rationale_loop] all {cfg.rounds} round(s) of {run.dir} are done; raise rounds= to go on", flush=True)
        return {}
    return run.run_round(k)


def run_loop(cfg: DictConfig) -> list[dict[str, Any]]:
    run = Run(cfg)
    print(f"[rationale_loop] run {run.dir}: {cfg.rounds} round(s) after SFT; next is {describe_next(run.dir)}", flush=True)
    while (k := next_round(run.dir)) <= cfg.rounds:
        run.run_round(k)
    return read_rounds(run.dir)


def read_rounds(run: Path) -> list[dict[str, Any]]:
    path = run / "rounds.jsonl"
    return list(read_jsonl(path)) if path.exists() else []
