"""The rounds. Round 0 is SFT; every later round is: generate, verify, mine, train, evaluate, save.

Stages hand off through plain files in the run directory:

    outputs/runs/<run>/
      round_00/  config.yaml  checkpoint/  metrics.json  eval.jsonl  DONE
      round_01/  config.yaml  generations.jsonl  pairs.jsonl  stats.json  checkpoint/  metrics.json  eval.jsonl  DONE
      rounds.jsonl   one line per finished round

A round with DONE is finished and never written again; the next round starts from its checkpoint.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import DictConfig, OmegaConf

from rationale_loop.config import ConfigError, config_differences, flatten, saved_form, under
from rationale_loop.config_checks import validate
from rationale_loop.data.formats import ReasoningFormat, get_format
from rationale_loop.data.tasks import TaskSplits, load_task
from rationale_loop.faults import crash_point
from rationale_loop.errors import DataError, UserError
from rationale_loop.integrity import check_checkpoint, mark_done
from rationale_loop.paths import remove
from rationale_loop.run_config import DATA_SETTINGS, NO_WORK, OVERRIDES, holds_work, read_saved_config, write_overrides
from rationale_loop.rundir import (
    ROUND_SUMMARY_KEYS,
    describe_next,
    fork,
    is_done,
    keep_complete_questions,
    next_round,
    read_rounds,
    remove_leftovers,
    round_dir,
    run_dir,
    write_rounds_index,
)
from rationale_loop.task_checks import check_task_fits_config
from rationale_loop.records import (
    Generation,
    JsonlRecords,
    Pair,
    Problem,
    append_jsonl,
    atomic_writer,
    group_by,
    read_json,
    sort_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
)

log = logging.getLogger(__name__)

# The settings the SFT data mix depends on: `make data` records these alone (round_00/data.yaml).
DATA_KEYS = ("data", "task", "model", "seed", "sft.max_length")
TRAIN_STATE = "train_state.pt"  # a resumable training state, while training runs
TRAIN_SUMMARY = "train.json"  # the training phase's losses and counts, written just before the checkpoint


class Run:
    """Everything the rounds of one run share: the config, the task's splits, the prompt format."""

    def __init__(self, cfg: DictConfig, rebuild_index: bool = True, overrides: list[str] | None = None):
        validate(cfg)
        self.cfg = cfg
        # The overrides this call runs with (the run's remembered ones and the new ones, run_config.py);
        # None when the config was composed elsewhere (tests, the API): then the rounds save none.
        self.overrides = overrides
        self.dir = run_dir(cfg)
        self.fmt: ReasoningFormat = get_format(cfg.task.prompt_format)
        self.splits: TaskSplits = load_task(cfg.task)
        check_task_fits_config(cfg, self.splits)
        self.problems: dict[str, Problem] = {p.id: p for p in self.splits.pool}
        self._fits: dict[tuple[int, int], tuple[list[Problem], int]] = {}
        if cfg.init_from:
            fork(self.dir, cfg.init_from)
        elif self.dir.exists() and rebuild_index:
            write_rounds_index(self.dir)  # derived, so cheap to rebuild: a crash right after DONE leaves it stale

    # -- one round -------------------------------------------------------------------------------
    def run_round(self, k: int) -> dict[str, Any]:
        """Run round k, or finish it where an interrupted call left it: every phase's output is a file
        written atomically, and a phase whose file is there is not run again."""
        if is_done(self.dir, k):
            raise UserError(f"{round_dir(self.dir, k)} is finished (DONE) and is never rewritten")
        if k > 0 and not is_done(self.dir, k - 1):
            raise UserError(f"round {k} needs round {k - 1} finished first ({round_dir(self.dir, k - 1)} has no DONE)")
        out = self._open_round(k)
        summary = self._sft(out) if k == 0 else self._self_train(k, out)
        summary["round"] = k
        write_json_atomic(out / "metrics.json", summary)
        mark_done(out)
        write_rounds_index(self.dir)
        self._log_round(summary)
        return summary

    def _open_round(self, k: int) -> Path:
        """Round k's directory, ready to (go on) work in: an interrupted call's with the same config, or
        a new one holding this config."""
        out = round_dir(self.dir, k)
        if not self._resumable(out):
            if k > 0 and round_dir(self.dir, k - 1).is_symlink():
                self._note_fork_differences(k - 1)
            elif k > 0:
                self._check_config_unchanged(k - 1)
            out.mkdir(parents=True, exist_ok=True)
            # Each round keeps its own resolved config, and the overrides that made it (run_config.py).
            with atomic_writer(out / "config.yaml") as handle:
                handle.write(OmegaConf.to_yaml(OmegaConf.create(saved_form(self.cfg))))
            if self.overrides is not None:
                write_overrides(out, self.overrides)
        return out

    def prepare_data(self) -> Path:
        """Prepare the SFT data mix into round 0, as SFT would and once (`make data`); SFT then reads it.
        Only the settings the mix depends on are recorded (data.yaml): SFT's own settings stay free."""
        out = round_dir(self.dir, 0)
        if is_done(self.dir, 0) or (out.is_dir() and holds_work(out)):
            return out  # SFT has started: its mix is there, made with its config
        out.mkdir(parents=True, exist_ok=True)
        self._drop_stale_mix(out)
        with atomic_writer(out / DATA_SETTINGS) as handle:
            handle.write(OmegaConf.to_yaml(OmegaConf.create(self._data_settings(saved_form(self.cfg)))))
        self._prepare_sft_mix(self._base_model_path(), out)
        return out

    @staticmethod
    def _data_settings(config: dict[str, Any]) -> dict[str, Any]:
        """The keys of a resolved config that the SFT data mix depends on (DATA_KEYS)."""
        return {key: value for key, value in flatten(config).items() if under(key, DATA_KEYS)}

    def _drop_stale_mix(self, out: Path) -> None:
        """A mix prepared (by `make data`, or a round 0 that stopped before training) with other data
        settings than this call's is derived data made for another config: delete it, saying so."""
        from rationale_loop.data.sources import MIX_MANIFEST

        if not (out / MIX_MANIFEST).exists():
            return
        recorded = out / DATA_SETTINGS if (out / DATA_SETTINGS).exists() else out / "config.yaml"
        previous = self._data_settings(read_saved_config(recorded)) if recorded.exists() else {}
        differences = config_differences(previous, self._data_settings(saved_form(self.cfg)))
        if differences:
            log.warning("%s: the SFT data mix was prepared with other data settings; preparing it again:\n  %s",
                        out, "\n  ".join(differences))
            for name in sorted(NO_WORK - {"config.yaml", OVERRIDES}):
                if (out / name).exists():
                    remove(out / name, inside=self.dir)

    def _resumable(self, out: Path) -> bool:
        """True when `out` holds an interrupted run of this round with this config, to be finished. A
        partial round with another config is refused, naming the keys, or with force=true cleared."""
        if not out.exists():
            return False
        if not holds_work(out):
            # No phase has finished (a first command that failed, `make data`): nothing to keep but a
            # data mix that still fits; the round starts with this call's config, whatever it had.
            self._drop_stale_mix(out)
            return False
        saved = out / "config.yaml"
        if not saved.exists():  # died before its config was written: nothing in it to keep
            remove(out, inside=self.dir)
            return False
        differences = self._differences_from(saved)
        if not differences:
            log.info("%s was interrupted; going on from where it stopped", out)
            remove_leftovers(out)
            return True
        listing = "\n  ".join(differences)
        if not self.cfg.force:
            raise ConfigError(
                f"{out} was interrupted, and the config differs from the one it started with:\n  {listing}\n"
                "go back to it to finish the round, or pass force=true to clear the round and start it again"
            )
        log.warning("force=true: clearing the interrupted %s, which started with another config:\n  %s", out, listing)
        remove(out, inside=self.dir)
        remove(self.dir / "tensorboard" / out.name, inside=self.dir)
        return False

    def _sft(self, out: Path) -> dict[str, Any]:
        base = self._base_model_path()
        if not (out / "checkpoint").exists():
            self._prepare_sft_mix(base, out)
            self._train(0, out, None)
        metrics = self._evaluate(out)
        return {**metrics, "base_model": str(base), **read_json(out / TRAIN_SUMMARY)}

    def _train(self, k: int, out: Path, backends: "_Lazy | None") -> None:
        """Round k's training phase, in this process or as a worker under accelerate (launch=)."""
        if self.cfg.launch.kind == "local":
            self.train_phase(k, backends)
            return
        from rationale_loop.launch import run_training_worker

        if backends is not None:
            backends.drop()  # the workers load their own copy; this one's memory is not needed meanwhile
        run_training_worker(self.cfg.launch, self.dir, k)
        if not (out / "checkpoint").exists():
            raise UserError(f"round {k}: the training worker exited without writing {out / 'checkpoint'}")

    def _prepare_sft_mix(self, base: str | Path, out: Path) -> None:
        """The chat and instruction sources of data=, prepared once into round_00 (sources.py)."""
        from rationale_loop.data.sources import MIX_MANIFEST, prepare_sft_mix
        from rationale_loop.model import load_tokenizer

        if not self.cfg.data.sources or (out / MIX_MANIFEST).exists():
            return
        tokenizer = load_tokenizer(base, self.cfg.model.trust_remote_code)
        manifest = prepare_sft_mix(self.cfg.data, [p.question for p in self.splits.eval], tokenizer, out, self.cfg.seed,
                                   max_length=self.cfg.sft.max_length, reasoning_format=self.cfg.task.prompt_format)
        log.info("SFT data mix: %d rendered rows; per source %s; per format %s", manifest["rendered_rows"],
                 {name: entry["kept"] for name, entry in manifest["sources"].items()}, manifest["formats"])

    def train_phase(self, k: int, backends: "_Lazy | None" = None) -> None:
        """Train round k (SFT for round 0) from its inputs on disk and save its checkpoint. With
        `backends`, the generation backend's model is reused when it can be."""
        out = round_dir(self.dir, k)
        if k > 0:
            self._rank_train(k, round_dir(self.dir, k - 1) / "checkpoint", backends or _Lazy(lambda: None), out)
            return
        from rationale_loop.adapters import load_for_training
        from rationale_loop.data.sources import read_sft_mix
        from rationale_loop.model import load_tokenizer
        from rationale_loop.objectives import SFTItem, SupervisedObjective

        base = self._base_model_path()
        log.info("round 0 (SFT): base model %s, %d SFT examples", base, len(self.splits.sft))
        model = load_for_training(base, self.cfg.model, self.cfg.peft)
        tokenizer = load_tokenizer(base, self.cfg.model.trust_remote_code)
        items = [SFTItem(self.fmt.prompt(p.question), self.fmt.response(p.rationale, p.answer)) for p in self.splits.sft]
        mixed = read_sft_mix(out)
        if mixed:
            from rationale_loop.data.templates import get_template

            items += mixed
            # Plain transformers and vLLM's chat endpoint then render chats as the model was trained on them.
            tokenizer.chat_template = get_template(self.cfg.data.formats[0]).chat_template()
            log.info("round 0 (SFT): %d task examples and %d rendered conversation rows", len(self.splits.sft), len(mixed))
        self._train_and_save(model, tokenizer, items, SupervisedObjective(), self.cfg.sft, self.cfg.seed, "sft", out, start=base)

    def _self_train(self, k: int, out: Path) -> dict[str, Any]:
        from rationale_loop.generate import Sampling
        from rationale_loop.objectives import build_objective

        start = round_dir(self.dir, k - 1) / "checkpoint"
        check_checkpoint(start.parent, f"round {k - 1}, the start of round {k}")
        gen = self.cfg.generate
        sampling = Sampling(gen.n, gen.temperature, gen.top_p, gen.max_new_tokens, seed=self.cfg.seed + k, stop=self._stop(),
                            reply_end=self.fmt.reply_end)
        backends = _Lazy(lambda: self._backend(start, gen.batch_size))
        pool, too_long = self._fitting(self.splits.pool, gen.max_new_tokens, start, f"round {k}: the pool")
        # Wall seconds of each phase this call ran (a phase finished by an earlier, interrupted call is absent).
        phases: dict[str, float] = {}
        clock = time.perf_counter()
        if not (out / "generations.jsonl").exists():
            if not pool:
                log.warning("round %d: no question of the pool can be asked; nothing is sampled", k)
                write_jsonl_atomic(out / "generations.jsonl", [])
            elif getattr(build_objective(self.cfg.objective), "uses_samples", True):
                log.info("round %d: sampling %d x %d completions from %s", k, len(pool), gen.n, start)
                self._generate(backends.get(), pool, sampling, out)
            else:  # the file contract holds, with nothing in it
                log.info("round %d: objective %s uses no samples; the pool is not sampled", k, self.cfg.objective.name)
                write_jsonl_atomic(out / "generations.jsonl", [])
            crash_point("generated")
            phases["generate_seconds"] = time.perf_counter() - clock  # sampling and verifying the pool
        if not (out / "stats.json").exists():
            clock = time.perf_counter()
            self._mine(backends, pool, too_long, sampling, out)
            phases["mine_seconds"] = time.perf_counter() - clock
            crash_point("mined")
        stats = read_json(out / "stats.json")
        log.info("round %d: %s", k, ", ".join(f"{key} {value}" for key, value in stats.items()))
        if not (out / "checkpoint").exists():
            clock = time.perf_counter()
            self._train(k, out, backends)
            phases["train_phase_seconds"] = time.perf_counter() - clock  # loading, training and saving
        backends.drop()
        clock = time.perf_counter()
        metrics = self._evaluate(out)
        phases["evaluate_seconds"] = time.perf_counter() - clock
        summary = {**metrics, **stats, **read_json(out / TRAIN_SUMMARY),
                   **{name: round(seconds, 2) for name, seconds in phases.items()}}
        note = degenerate_round_note(summary, len(self.splits.pool))
        if note:
            log.warning("round %d: %s; its checkpoint is its starting model, and the loop goes on", k, note)
            summary["note"] = note
        return summary

    def _generate(self, backend: Any, pool: list[Problem], sampling: Any, out: Path) -> None:
        """Sample and judge the pool, appending each question's samples as they come, so a crash loses
        at most the batch in flight; a resumed call keeps the questions already complete. The file
        appears, sorted by question and sample, only when the whole pool is done."""
        from rationale_loop.rollouts import sample_and_judge

        partial = out / "generations.jsonl.partial"
        done = keep_complete_questions(partial, sampling.n)
        index_of = {p.id: i for i, p in enumerate(pool)}
        if done:
            log.info("resuming generation: %d of %d questions were already sampled", len(done), len(pool))
        unknown = sorted(done - index_of.keys())
        if unknown:
            raise DataError(f"{partial} holds samples of questions that are not in the pool now ({unknown[:3]}...): "
                               "the task's data changed since the round started; restore it, or delete the file to sample again")
        skip = {index_of[q] for q in done}
        for group in sample_and_judge(backend, pool, self.fmt, sampling, self.cfg.verify.kind, skip=skip,
                                      chain=self.cfg.verify.chain):
            append_jsonl(partial, group)
            crash_point("generate")
        sort_jsonl(partial, out / "generations.jsonl", key=lambda row: (row["question_id"], row["sample_index"]))
        partial.unlink()

    def _mine(self, backends: "_Lazy", pool: list[Problem], too_long: int, sampling: Any, out: Path) -> None:
        """Pairs and stats, one question at a time from generations.jsonl so memory stays flat as the
        pool grows; stats.json is written last and marks the phase done."""
        from rationale_loop.mine import mine_question
        from rationale_loop.objectives import build_objective
        from rationale_loop.stats import SampleStats

        counts = SampleStats(n=sampling.n)
        solved: set[str] = set()

        def pairs() -> Any:
            for group in group_by(JsonlRecords(out / "generations.jsonl", Generation), "question_id"):
                counts.add_question(group)
                if any(g.correct for g in group):
                    solved.add(group[0].question_id)
                yield from mine_question(group, self.problems[group[0].question_id])

        written = write_jsonl_atomic(out / "pairs.jsonl", pairs())
        stats = {**counts.result(), "pairs": written, "skipped_too_long": too_long}
        if getattr(build_objective(self.cfg.objective), "samples_sft_questions", False):
            sft_samples = self._sample_sft_questions(backends.get(), sampling)
            stats["sft_samples"] = write_jsonl_atomic(out / "sft_generations.jsonl", sft_samples)
        if self.cfg.objective.rationalize:
            rationalizations = self._rationalize(backends.get(), pool, solved, sampling)
            write_jsonl_atomic(out / "rationalizations.jsonl", rationalizations)
            stats["rationalized"] = len(rationalizations)
        write_json_atomic(out / "stats.json", stats)

    def _rank_train(self, k: int, start: Path, backends: "_Lazy", out: Path) -> None:
        from rationale_loop.adapters import load_for_training
        from rationale_loop.model import load_tokenizer, torch_dtype
        from rationale_loop.objectives import RoundData, build_objective

        objective = build_objective(self.cfg.objective)
        pairs = list(JsonlRecords(out / "pairs.jsonl", Pair))
        rationalizations = list(JsonlRecords(out / "rationalizations.jsonl", Generation)) if (out / "rationalizations.jsonl").exists() else []
        generations = JsonlRecords(out / "generations.jsonl", Generation)
        sft_samples = JsonlRecords(out / "sft_generations.jsonl", Generation) if (out / "sft_generations.jsonl").exists() else []
        items = objective.items(RoundData(self.problems, generations, pairs, self.fmt, rationalizations=rationalizations,
                                          sft=self.splits.sft, sft_generations=sft_samples, seed=self.cfg.seed + k,
                                          preferences=self._preferences(k)))
        # Reuse the generation backend's model when it is the training dtype; with vLLM, generation ran
        # in its own process and its memory is already free.
        backend = backends.peek()
        model, tokenizer = getattr(backend, "model", None), getattr(backend, "tokenizer", None)
        if model is None or model.dtype != torch_dtype(self.cfg.model.dtype) or self.cfg.peft.method == "qlora":
            model = load_for_training(start, self.cfg.model, self.cfg.peft)
            tokenizer = load_tokenizer(start, self.cfg.model.trust_remote_code)
        backends.drop()

        def rank_own_pairs(current: Any, when: str) -> dict[str, Any]:
            from rationale_loop.diagnostics import pair_scores, ranking_summary

            scores = pair_scores(current, tokenizer, pairs, self.cfg.rank.max_length, self.cfg.rank.micro_batch_size, self.fmt.reply_end)
            return ranking_summary(scores, when)

        self._train_and_save(model, tokenizer, items, objective, self.cfg.rank, self.cfg.seed + k, f"round {k}", out,
                             start=start, average_with=start, measure=rank_own_pairs)

    def _train_and_save(
        self, model: Any, tokenizer: Any, items: Any, objective: Any, train_cfg: Any, seed: int, desc: str, out: Path,
        start: str | Path, average_with: Path | None = None, measure: Callable[[Any, str], dict[str, Any]] | None = None,
    ) -> None:
        """Train, then write the summary and, last, the checkpoint (atomically): a round whose
        checkpoint exists has finished training. `measure(model, "before" | "after")` adds diagnostics
        of the starting model (measured before any resumed state is loaded, so always the round's start)
        and of the model that is saved."""
        from rationale_loop.diagnostics import term_at_ends
        from accelerate import PartialState

        from rationale_loop.adapters import attach, merge
        from rationale_loop.model import save_checkpoint
        from rationale_loop.train import train

        before = measure(model, "before") if measure else {}
        log_dir = self.dir / "tensorboard" / out.name
        model = attach(model, self.cfg.peft, seed)
        result = train(model, tokenizer, items, objective, train_cfg, seed=seed, desc=desc, state_path=out / TRAIN_STATE, log_dir=log_dir,
                       reply_end=self.fmt.reply_end)
        if not PartialState().is_main_process:
            return  # under a launcher, the main process merges, measures and writes; the others are done
        model = merge(model, self.cfg.peft, out / "adapter", start, self.cfg.model)
        if average_with is not None and self.cfg.average.method != "none":
            from rationale_loop.merge import average_into
            from rationale_loop.model import load_weights

            averaged = average_into(model, load_weights(average_with), self.cfg.average.method, self.cfg.average.factor)
            log.info("%s: %s-averaged %d tensors with %s (factor %.3f toward the new weights)",
                     desc, self.cfg.average.method, averaged, average_with, self.cfg.average.factor)
        summary = _train_summary(result)
        if measure:
            summary.update({**before, **measure(model, "after"), **term_at_ends(result.history, "rank")})
            log.info("%s: own pairs ranked right %s -> %s, mean margin s_c - s_r %s -> %s, mean s_c %s -> %s; rank term %s -> %s",
                     desc, *(_fmt(summary.get(key)) for key in (
                         "pairs_ranked_right_before", "pairs_ranked_right_after", "pair_margin_before", "pair_margin_after",
                         "chosen_score_before", "chosen_score_after", "rank_term_first", "rank_term_last")))
        write_json_atomic(out / TRAIN_SUMMARY, summary)
        save_checkpoint(model, tokenizer, out / "checkpoint")
        (out / TRAIN_STATE).unlink(missing_ok=True)  # the checkpoint supersedes it (and it can be large)
        crash_point("trained")

    def _preferences(self, k: int) -> list[tuple[str, str, str]]:
        """Round k's share of data='s preference pairs (prepared in round 0): all of them, or with
        data.preference_per_round = n, the next n of a seeded order, so the rounds go through them in turn."""
        import random

        from rationale_loop.data.sources import read_preference_pairs

        rows = [(r["prompt"], r["chosen"], r["rejected"]) for r in read_preference_pairs(round_dir(self.dir, 0))]
        n = self.cfg.data.preference_per_round
        if not rows or n <= 0 or n >= len(rows):
            chosen = rows
        else:
            random.Random(f"preferences/{self.cfg.seed}").shuffle(rows)
            chosen = [rows[(index + (k - 1) * n) % len(rows)] for index in range(n)]
        if chosen:
            log.info("round %d: %d preference pairs from data= ranked beside the mined pairs", k, len(chosen))
        return chosen

    def _sample_sft_questions(self, backend: Any, sampling: Any) -> list[Generation]:
        """One sample of the round's starting model per SFT question (SPIN's rejected side)."""
        from dataclasses import replace

        from rationale_loop.rollouts import sample_and_judge

        log.info("sampling the %d SFT questions once each (the objective plays against its SFT data)", len(self.splits.sft))
        once = replace(sampling, n=1)
        groups = sample_and_judge(backend, self.splits.sft, self.fmt, once, self.cfg.verify.kind, desc="sample SFT questions",
                                  chain=self.cfg.verify.chain)
        return sorted((g for group in groups for g in group), key=lambda g: g.question_id)

    def _rationalize(self, backend: Any, pool: list[Problem], solved: set[str], sampling: Any) -> list[Generation]:
        """STaR's rationalization: ask every question with no correct sample again, the gold answer
        given as a hint; keep the samples that reach it, recorded under the prompt without the hint."""
        from dataclasses import replace

        from rationale_loop.rollouts import judge

        unsolved = [p for p in pool if p.id not in solved]
        prompts = [self.fmt.hinted_prompt(p.question, p.answer) for p in unsolved]
        log.info("rationalization: %d unsolved questions asked again with the answer as a hint", len(unsolved))
        kept = []
        for index, completions in backend.generate(prompts, sampling):
            problem = unsolved[index]
            for sample_index, completion in enumerate(completions):
                sample = judge(problem, prompts[index], sample_index, completion, self.fmt, self.cfg.verify.kind, self.cfg.verify.chain)
                if sample.correct:
                    kept.append(replace(sample, prompt=self.fmt.prompt(problem.question)))
        return sorted(kept, key=lambda g: (g.question_id, g.sample_index))

    # -- helpers -----------------------------------------------------------------------------------
    def _check_config_unchanged(self, previous: int) -> None:
        """Say how this round's config differs from the last finished round's. The run's overrides are
        remembered (run_config.py), so a difference is one the user typed: a deliberate change, kept for
        the rounds that follow, shown so that it is never a silent one."""
        differences = self._differences_from(round_dir(self.dir, previous) / "config.yaml")
        if differences:
            log.warning("round %d changes the config of %s (kept for the rounds after it):\n  %s",
                        previous + 1, round_dir(self.dir, previous), "\n  ".join(differences))

    def _differences_from(self, saved_config: Path) -> list[str]:
        """The recipe keys on which this call's config differs from a round's saved config.yaml."""
        return config_differences(read_saved_config(saved_config), saved_form(self.cfg))

    def _note_fork_differences(self, previous: int) -> None:
        """The first round of a fork may change the recipe: that is what forks are for. Say how."""
        differences = self._differences_from(round_dir(self.dir, previous) / "config.yaml")
        log.info("forked run: config changes from %s:\n  %s", round_dir(self.dir, previous).resolve(), "\n  ".join(differences) or "none")

    def _base_model_path(self) -> Path | str:
        model_cfg = self.cfg.model
        if model_cfg.source == "pretrained":
            return model_cfg.path
        from hashlib import sha256

        from rationale_loop.model import build_tiny_model

        corpus = [self.fmt.prompt(p.question) + self.fmt.response(p.rationale, p.answer) for p in self.splits.sft]
        key = sha256("\n".join(corpus).encode()).hexdigest()
        return build_tiny_model(model_cfg, corpus, key)

    def _stop(self) -> tuple[str, ...]:
        """Stop strings for every sample and evaluation: the configured ones and the format's end of turn."""
        return tuple(dict.fromkeys([*self.cfg.generate.stop, *self.fmt.stop]))

    def _backend(self, checkpoint: Path, batch_size: int) -> Any:
        from rationale_loop.generate import make_backend

        return make_backend(self.cfg.generate, checkpoint, self.cfg.model.dtype, batch_size, self.cfg.model.trust_remote_code)

    def _evaluate(self, out: Path) -> dict[str, Any]:
        """Greedy held-out accuracy of the round's checkpoint; read back from eval.jsonl when an
        interrupted call already wrote it."""
        from rationale_loop.evaluate import evaluate, metrics_from_file

        samples = out / "eval.jsonl"
        questions, too_long = self._fitting(self.splits.eval, self.cfg.eval.max_new_tokens, out / "checkpoint", "evaluation")
        if samples.exists():
            return {**metrics_from_file(samples), "eval_skipped_too_long": too_long}
        backend = self._backend(out / "checkpoint", self.cfg.eval.batch_size)
        metrics = evaluate(backend, questions, self.fmt, self.cfg.verify.kind, self.cfg.eval.max_new_tokens, samples,
                           stop=self._stop(), chain=self.cfg.verify.chain)
        metrics["eval_skipped_too_long"] = too_long
        log.info("held-out accuracy %.3f (%d questions, %.3f valid)", metrics["eval_accuracy"], metrics["eval_questions"], metrics["eval_valid"])
        crash_point("evaluated")
        return metrics

    def _fitting(self, problems: list[Problem], max_new_tokens: int, checkpoint: Path, what: str) -> tuple[list[Problem], int]:
        """The problems whose prompt fits the model's context with max_new_tokens to spare, and the
        count of the others (rationale_loop/prompt_budget.py). Every round's model has its base's
        tokenizer and context, so the answer is worked out once per split and budget."""
        from rationale_loop.model import load_tokenizer
        from rationale_loop.prompt_budget import context_length, fitting

        key = (id(problems), max_new_tokens)
        if key not in self._fits:
            engine_limit = self.cfg.generate.max_model_len if self.cfg.generate.backend == "vllm" else None
            context = context_length(checkpoint, engine_limit)
            tokenizer = load_tokenizer(checkpoint, self.cfg.model.trust_remote_code) if context else None
            self._fits[key] = fitting(problems, self.fmt, tokenizer, context, max_new_tokens, self.cfg.generate.too_long, what)
        return self._fits[key]

    def _log_round(self, summary: dict[str, Any]) -> None:
        """Round-level scalars to TensorBoard (tensorboard/rounds), one point per round."""
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(self.dir / "tensorboard" / "rounds")) as writer:
            for key in ROUND_SUMMARY_KEYS[1:]:
                if isinstance(summary.get(key), (int, float)):
                    writer.add_scalar(f"round/{key}", summary[key], summary["round"])


class _Lazy:
    """A generation backend made on first use: a resumed round that only has training left never
    loads one."""

    def __init__(self, make: Any):
        self._make, self._value = make, None

    def get(self) -> Any:
        if self._value is None:
            self._value = self._make()
        return self._value

    def peek(self) -> Any:
        return self._value

    def drop(self) -> None:
        self._value = None


def degenerate_round_note(summary: dict[str, Any], pool_size: int) -> str | None:
    """Why a round trained on nothing, in words, or None when it trained."""
    if summary.get("train_items"):
        return None
    if pool_size == 0:
        return "the pool is empty"
    if summary.get("skipped_too_long", 0) >= pool_size:
        return f"every question of the pool is too long for the model's context ({pool_size} skipped)"
    if summary.get("samples") and not summary.get("valid"):
        return "no sample was valid (see invalid_reasons)"
    if summary.get("samples") and not summary.get("correct"):
        return "no sample was correct"
    if summary.get("samples") and not summary.get("pairs"):
        return "no pair could be mined (no question had both a correct and an incorrect sample)"
    return "there was nothing to train on"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _train_summary(result: Any) -> dict[str, Any]:
    data = asdict(result)
    history = data.pop("history")
    return {
        "train_loss": data["mean_loss"],
        "train_items": data["items"],
        "train_dropped_too_long": data["dropped_too_long"],
        "train_steps": data["steps"],
        "train_tokens": data["tokens"],
        "train_processes": data["processes"],
        "train_padding_fraction": round(data["padding_fraction"], 4),
        "train_seconds": round(data["seconds"], 2),
        "train_history": history,
    }


@contextmanager
def open_run(cfg: DictConfig, overrides: list[str] | None = None) -> Iterator["Run"]:
    """The run, held by this process alone (rationale_loop/lock.py) while the block runs: every command
    that writes a run opens it this way. The config is checked first, so a bad one is refused before the
    run directory is even created. The run's log (rationale_loop.log) is appended to meanwhile."""
    from rationale_loop.lock import run_lock

    validate(cfg)
    if cfg.launch.kind != "local":  # more processes than GPUs: refused before the run does any work
        from rationale_loop.launch import check_devices

        check_devices(cfg.launch)
    with run_lock(run_dir(cfg)), _run_log(run_dir(cfg) / "rationale_loop.log"):
        yield Run(cfg, overrides=overrides)


@contextmanager
def _run_log(path: Path) -> Iterator[None]:
    """This call's log lines appended to the run's log file, as well as printed."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def run_sft(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    with open_run(cfg, overrides) as run:
        if is_done(run.dir, 0):
            print(f"[rationale_loop] {run.dir}/round_00 is already done; SFT is not run again", flush=True)
        else:
            run.run_round(0)


def run_data(cfg: DictConfig, overrides: list[str] | None = None) -> str:
    """Prepare the run's SFT data (or read it back once prepared) and describe it (data/preview.py)."""
    from rationale_loop.data.preview import preview

    with open_run(cfg, overrides) as run:
        out = run.prepare_data()
        first = run.splits.sft[0] if run.splits.sft else None
        example = (run.fmt.prompt(first.question), run.fmt.response(first.rationale, first.answer)) if first else ("", "")
        return f"[rationale_loop] SFT data of {run.dir} (prepared in {out}):\n\n" + preview(out, example, len(run.splits.sft))


def run_next_round(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    with open_run(cfg, overrides) as run:
        k = next_round(run.dir)
        if k > cfg.rounds:
            print(f"[rationale_loop] all {cfg.rounds} round(s) of {run.dir} after SFT are done; "
                  f"rounds={k} runs round {k}, and the run remembers it", flush=True)
            return {}
        print(f"[rationale_loop] run {run.dir}: next is {describe_next(run.dir)}", flush=True)
        return run.run_round(k)


def run_loop(cfg: DictConfig, overrides: list[str] | None = None) -> list[dict[str, Any]]:
    with open_run(cfg, overrides) as run:
        print(f"[rationale_loop] run {run.dir}: {cfg.rounds} round(s) after SFT; next is {describe_next(run.dir)}", flush=True)
        while (k := next_round(run.dir)) <= cfg.rounds:
            run.run_round(k)
        return read_rounds(run.dir)


