"""The rounds. Round 0 is SFT; every later round samples the pool with the last round's model, judges
and mines the samples, trains on them, and evaluates the new checkpoint (the phases, phases/).

Each phase's output is a file in the round's directory, written atomically; a phase whose output is
there is not run again, so an interrupted call is finished by the next one. A round with DONE is finished
and never written again; the next round starts from its checkpoint (docs/run-directory.md).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import DictConfig

from rationale_loop.preflight.config_checks import validate
from rationale_loop.config.errors import UserError
from rationale_loop.run.integrity import check_checkpoint, mark_done
from rationale_loop.phases import base_eval, evaluate, mine, sample, train
from rationale_loop.phases.context import Engines, RunContext
from rationale_loop.run.records import read_json, write_json_atomic
from rationale_loop.run.round_start import open_round
from rationale_loop.run.rundir import ROUND_SUMMARY_KEYS, describe_next, fork, is_done, next_round, read_rounds, write_rounds_index
from rationale_loop.preflight.task_checks import check_task_fits_config

log = logging.getLogger(__name__)

Phase = Callable[[RunContext, int, Engines], Any]

# (output, phase, the summary key of its wall seconds): run in order, each when its output is missing.
SFT_PHASES: tuple[tuple[str, Phase, str], ...] = (
    (base_eval.OUTPUT, base_eval.base_eval, "base_eval_seconds"),  # where the model starts (eval.base_model)
    (train.OUTPUT, train.train, "train_phase_seconds"),
)
ROUND_PHASES: tuple[tuple[str, Phase, str], ...] = (
    (sample.OUTPUT, sample.sample, "generate_seconds"),  # sampling and verifying the pool
    (mine.OUTPUT, mine.mine, "mine_seconds"),
    (train.OUTPUT, train.train, "train_phase_seconds"),  # loading, training and saving
)


class Run:
    """One run held by this call: its context (config, task, format), the generation engine its rounds
    share, and the overrides its rounds save."""

    def __init__(self, cfg: DictConfig, overrides: list[str] | None = None):
        validate(cfg, overrides or ())
        self.ctx = RunContext(cfg)
        self.cfg, self.dir, self.overrides = cfg, self.ctx.dir, overrides
        check_task_fits_config(cfg, self.ctx.splits)
        self.engines = Engines(self.ctx)
        if cfg.init_from:
            fork(self.dir, cfg.init_from)
        elif self.dir.exists():
            write_rounds_index(self.dir)  # derived, so cheap to rebuild: a crash right after DONE leaves it stale

    def run_round(self, k: int) -> dict[str, Any]:
        """Run round k, or finish it where an interrupted call left it."""
        if is_done(self.dir, k):
            raise UserError(f"{self.ctx.round_dir(k)} is finished (DONE) and is never rewritten")
        if k > 0:
            if not is_done(self.dir, k - 1):
                raise UserError(f"round {k} needs round {k - 1} finished first ({self.ctx.round_dir(k - 1)} has no DONE)")
            check_checkpoint(self.ctx.round_dir(k - 1), f"round {k - 1}, the start of round {k}")
        out = open_round(self.ctx.cfg, self.ctx.dir, k, self.overrides)
        # Wall seconds of each phase this call ran (a phase finished by an earlier, interrupted call is absent).
        seconds: dict[str, float] = {}
        for output, phase, timer in SFT_PHASES if k == 0 else ROUND_PHASES:
            if not (out / output).exists():
                clock = time.perf_counter()
                phase(self.ctx, k, self.engines)
                seconds[timer] = round(time.perf_counter() - clock, 2)
            if output == mine.OUTPUT:
                log.info("round %d: %s", k, ", ".join(f"{key} {value}" for key, value in read_json(out / output).items()))
        clock = time.perf_counter()
        metrics = evaluate.evaluate(self.ctx, k, self.engines)
        summary = self._summary(k, metrics, seconds)
        if k > 0:
            summary["evaluate_seconds"] = round(time.perf_counter() - clock, 2)
        summary["round"] = k
        write_json_atomic(out / "metrics.json", summary)
        mark_done(out)
        write_rounds_index(self.dir)
        self._log_round(summary)
        return summary

    def _summary(self, k: int, metrics: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
        out = self.ctx.round_dir(k)
        trained = read_json(out / train.TRAIN_SUMMARY)
        if k == 0:
            return {**metrics, "base_model": str(self.ctx.base_model_path()), **base_eval.base_metrics(out), **trained}
        summary = {**metrics, **read_json(out / mine.OUTPUT), **trained, **seconds}
        note = degenerate_round_note(summary, len(self.ctx.splits.pool))
        if note:
            log.warning("round %d: %s; its checkpoint is its starting model, and the loop goes on", k, note)
            summary["note"] = note
        return summary

    def _log_round(self, summary: dict[str, Any]) -> None:
        """Round-level scalars to TensorBoard (tensorboard/rounds), one point per round."""
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(self.dir / "tensorboard" / "rounds")) as writer:
            for key in ROUND_SUMMARY_KEYS[1:]:
                if isinstance(summary.get(key), (int, float)):
                    writer.add_scalar(f"round/{key}", summary[key], summary["round"])


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


@contextmanager
def open_run(cfg: DictConfig, overrides: list[str] | None = None) -> Iterator[Run]:
    """The run, held by this process alone (rationale_loop/run/lock.py) while the block runs: every command
    that writes a run opens it this way. The config is checked first, so a bad one is refused before the
    run directory is even created. The run's log (rationale_loop.log) is appended to meanwhile; the
    generation engine is closed at the end."""
    from rationale_loop.phases.launch import check_processes
    from rationale_loop.run.lock import run_lock
    from rationale_loop.run.rundir import run_dir

    validate(cfg, overrides or ())
    check_processes(cfg)  # more processes than GPUs: refused before the run does any work
    with run_lock(run_dir(cfg)), _run_log(run_dir(cfg) / "rationale_loop.log"):
        run = Run(cfg, overrides=overrides)
        try:
            yield run
        finally:
            run.engines.close()


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
    from rationale_loop.phases.sft_data import prepare_data

    with open_run(cfg, overrides) as run:
        out = prepare_data(run.ctx)
        fmt, sft = run.ctx.fmt, run.ctx.splits.sft
        example = (fmt.prompt(sft[0].question), fmt.response(sft[0].rationale, sft[0].answer)) if sft else ("", "")
        return f"[rationale_loop] SFT data of {run.dir} (prepared in {out}):\n\n" + preview(out, example, len(sft))


def _all_done(run: Run) -> bool:
    """True, said with how to go on, when every round `rounds` asks for is finished."""
    k = next_round(run.dir)
    if k > run.cfg.rounds:
        print(f"[rationale_loop] all {run.cfg.rounds} round(s) of {run.dir} after SFT are done; "
              f"rounds={k} runs round {k}, and the run remembers it", flush=True)
    return k > run.cfg.rounds


def run_next_round(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    with open_run(cfg, overrides) as run:
        if _all_done(run):
            return {}
        print(f"[rationale_loop] run {run.dir}: next is {describe_next(run.dir)}", flush=True)
        return run.run_round(next_round(run.dir))


def run_loop(cfg: DictConfig, overrides: list[str] | None = None) -> list[dict[str, Any]]:
    with open_run(cfg, overrides) as run:
        if _all_done(run):
            return read_rounds(run.dir)
        print(f"[rationale_loop] run {run.dir}: {cfg.rounds} round(s) after SFT; next is {describe_next(run.dir)}", flush=True)
        while (k := next_round(run.dir)) <= cfg.rounds:
            run.run_round(k)
        return read_rounds(run.dir)
