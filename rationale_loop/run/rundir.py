"""The run directory: where a run's rounds live, which of them are finished, the rounds index, forks of
another run's rounds, and what a killed write leaves behind. The orchestrator (loop.py) writes rounds
through these; the viewers (report, html_report, plots), export and the training worker read them here,
without the orchestrator.

    outputs/runs/<run>/
      round_00/  config.yaml  checkpoint/  metrics.json  eval.jsonl  DONE
      round_01/  config.yaml  generations.jsonl  pairs.jsonl  stats.json  checkpoint/  metrics.json  eval.jsonl  DONE
      rounds.jsonl   one line per finished round (derived from the rounds' metrics.json)
      fork.json      where a forked run's shared rounds come from

A round with DONE is finished and never written again (docs/run-directory.md).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig

from rationale_loop.config.errors import ConfigError, DataError
from rationale_loop.run.integrity import DONE
from rationale_loop.config.paths import remove
from rationale_loop.run.records import atomic_writer, read_jsonl, write_json_atomic, write_jsonl_atomic

log = logging.getLogger(__name__)


ROUND_SUMMARY_KEYS = (
    "round", "eval_accuracy", "eval_questions", "samples", "valid", "correct", "pass_at_n", "pairs", "train_loss",
    # what the round trained on, and whether its ranking reached the weights (rationale_loop/training/diagnostics.py)
    "train_items", "train_steps", "rank_term_first", "rank_term_last",
    "pair_margin_before", "pair_margin_after", "pairs_ranked_right_before", "pairs_ranked_right_after",
    "chosen_score_before", "chosen_score_after", "rejected_score_before", "rejected_score_after",
    # verify.chain=count or check: the samples' arithmetic steps (stats.CHAIN_STATS), and held-out
    # accuracy by the answer alone and by answer and steps (evaluate.accuracy_metrics); absent otherwise
    "steps_checked", "steps_wrong", "steps_unparsed", "right_answer_wrong_chain",
    "eval_answer_accuracy", "eval_chain_accuracy",
    "note",  # why a round trained on nothing (degenerate_round_note), absent when it trained
)


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.output_root) / cfg.run


def round_dir(run: Path, k: int) -> Path:
    return run / f"round_{k:02d}"


def is_done(run: Path, k: int) -> bool:
    """Whether round k has DONE, the regular file that marks it finished. Anything else in its place (a
    directory, a FIFO, a link), or in the place of the round's directory, is not taken for finished, and
    raises naming it, so no command goes on as if the round were not there either."""
    import stat

    from rationale_loop.config.errors import CheckpointError
    from rationale_loop.config.paths import RunPathError, file_kind

    done = round_dir(run, k) / DONE
    try:
        mode = os.lstat(done).st_mode
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        if not run.is_dir():  # the run's own path: named where the run is opened (paths.check_run_is_directory, run_lock)
            return False
        # A file (a FIFO...) where the round's directory should be: taken for an unfinished round, the next
        # command would start or resume the round in it and fail deep inside; the file may be the user's.
        out = round_dir(run, k)
        raise RunPathError(f"{out} is {file_kind(os.stat(out).st_mode)}, not a round directory; move it away, "
                           f"and the next command runs round {k} again")
    if stat.S_ISREG(mode):
        return True
    raise CheckpointError(f"{done} is {file_kind(mode)}, not the file that marks a finished round: restore DONE from a copy, "
                          "or remove it and the next command finishes the round from its files")


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
        why += f"; round {k} was interrupted and goes on from its last finished phase"
    return f"round {k}: {why}, starting from {round_dir(run, k - 1) / 'checkpoint'}"


def remove_leftovers(out: Path) -> None:
    """What a kill in the middle of an atomic write leaves: temporary files and checkpoint staging
    directories (model-sized), and the partial generation files (one per worker) whose sorted copy was
    already written."""
    for leftover in sorted(out.glob(".*")):
        if leftover.is_symlink() or leftover.is_dir() or leftover.name.endswith(".tmp"):
            remove(leftover, inside=out)  # a link is removed as a link, never followed
    for output in ("generations.jsonl", "eval.jsonl"):
        if (out / output).exists():
            for partial in sorted(out.glob(f"{output}.partial*")):
                remove(partial, inside=out)


def keep_complete_questions(partial: Path, n: int) -> set[str]:
    """The questions of an interrupted generation file that have all n samples. The file is
    rewritten (atomically) with only those: rows of a question cut off mid-write, or a line cut off
    mid-write, are dropped and sampled again, so no line is ever duplicated. Two passes over the file,
    so memory holds counts, not rows."""
    if not partial.exists():
        return set()
    counts: Counter[str] = Counter()
    for line_number, line in enumerate(_whole_lines(partial), start=1):
        counts[_question_of(partial, line_number, line)] += 1
    complete = {q for q, count in counts.items() if count == n}
    with atomic_writer(partial) as handle:
        handle.writelines(line for line_number, line in enumerate(_whole_lines(partial), start=1)
                          if _question_of(partial, line_number, line) in complete)
    return complete


def _question_of(path: Path, line_number: int, line: str) -> str:
    """The question id of one whole line of an interrupted generation file; a line damaged otherwise
    than by the kill (which only cuts the last one short) raises naming the file and line."""
    try:
        row = json.loads(line)
    except ValueError as error:
        row, why = None, f"not valid JSON ({error})"
    else:
        why = "no question_id"
    if isinstance(row, dict) and isinstance(row.get("question_id"), str):
        return row["question_id"]
    raise DataError(f"{path}:{line_number}: {why}; delete the file to sample the round again")


def _whole_lines(path: Path) -> Iterator[str]:
    """The lines of a file up to the first one without its newline: the write in flight when the
    process died. Bytes that are not UTF-8 raise naming the file and line."""
    from rationale_loop.run.records import open_regular

    with open_regular(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                return
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{line_number}: not valid UTF-8; delete the file to sample the round again") from None


# The base model's held-out metrics (phases/base_eval.py), in round 0's row when it was evaluated.
BASE_KEYS = ("base_eval_accuracy", "base_eval_questions", "base_eval_valid")
BASE_ROUND = "base"


def with_base_row(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rounds' rows with the base model's first (round "base": where the model started, before SFT)
    when round 0 evaluated it; as they are otherwise."""
    first = rows[0] if rows else {}
    if first.get("round") != 0 or first.get("base_eval_accuracy") is None:
        return rows
    base = {"round": BASE_ROUND, **{key.removeprefix("base_"): first.get(key) for key in BASE_KEYS}}
    return [base, *rows]


def round_label(k: Any) -> str:
    """A round's name in tables: the base model, SFT (round 0) or the round's number."""
    return "base" if k == BASE_ROUND else "0 (SFT)" if k == 0 else str(k)


def write_rounds_index(run: Path) -> None:
    """rounds.jsonl is derived from the finished rounds' metrics, rebuilt whole each time, so a
    crash can neither duplicate nor drop a line."""
    rows = []
    k = 0
    while is_done(run, k):
        metrics = read_round_metrics(run, k)
        rows.append({key: metrics.get(key) for key in ROUND_SUMMARY_KEYS})
        rows[-1].update({key: metrics[key] for key in BASE_KEYS if key in metrics})  # round 0's, when the base was evaluated
        k += 1
    write_jsonl_atomic(run / "rounds.jsonl", rows)


def read_round_metrics(run: Path, k: int) -> dict[str, Any]:
    """A finished round's metrics.json; missing or damaged, a DataError naming it (and the line)."""
    from rationale_loop.run.records import read_json

    path = round_dir(run, k) / "metrics.json"
    try:
        return read_json(path)
    except FileNotFoundError:
        raise DataError(f"{path} is missing from a finished round; restore it from a copy, or delete the round") from None


FORK = "fork.json"


def parse_round_path(path: str | Path) -> tuple[Path, int]:
    """`<run>/round_k` (or its checkpoint directory) -> (run directory, k)."""
    path = Path(path)
    if path.name == "checkpoint":
        path = path.parent
    match = re.fullmatch(r"round_(\d+)", path.name)
    if not match:
        raise ConfigError(f"init_from={str(path)!r} must name a round directory, <run>/round_<k>")
    return path.parent, int(match.group(1))


def fork(run: Path, init_from: str | Path) -> None:
    """Start `run` from a finished round of another run: its rounds 0..k become links to the source's
    (finished rounds are never rewritten, so sharing them is safe and costs no disk), and the next
    round trains from round k's checkpoint. fork.json, written first, records where the run came from;
    a fork interrupted while linking is completed by the next call."""
    source, k = parse_round_path(init_from)
    if not is_done(source, k):
        raise ConfigError(f"init_from={init_from}: {round_dir(source, k)} is not a finished round (no DONE)")
    origin = {"from": str(round_dir(source, k).resolve()), "round": k}
    from rationale_loop.run.records import read_fork_record

    record = run / FORK
    if record.exists() or record.is_symlink():
        recorded = read_fork_record(record)
        if recorded != origin:
            raise ConfigError(f"init_from={init_from}: {run} was forked from {recorded['from']}; start a new run (run=NAME)")
    elif round_dir(run, 0).exists():
        raise ConfigError(f"init_from={init_from}: {run} already has rounds of its own; fork into a new run (run=NAME)")
    else:
        write_json_atomic(record, origin)
    for j in range(k + 1):
        link, target = round_dir(run, j), round_dir(source, j).resolve()
        if link.is_symlink() and link.resolve() == target:
            continue
        # Relative, so that moving the whole outputs tree keeps forks working; resolved first, so that
        # a fork of a fork links to the rounds themselves, not to links.
        link.symlink_to(os.path.relpath(target, run.resolve()), target_is_directory=True)
    write_rounds_index(run)
    log.info("forked %s from %s: rounds 0..%d are shared, round %d starts from its checkpoint", run, origin["from"], k, k + 1)


def read_rounds(run: Path) -> list[dict[str, Any]]:
    """The rows of rounds.jsonl (none when absent); a damaged line raises naming the file and line."""
    path = run / "rounds.jsonl"
    if not (path.exists() or path.is_symlink()):
        return []
    rows = list(read_jsonl(path))
    for line_number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or type(row.get("round")) is not int:
            raise DataError(f"{path}: row {line_number} has no round number; delete the file: it is derived from the rounds' "
                            "metrics.json, and the next round, sft or loop command rebuilds it")
    return rows
