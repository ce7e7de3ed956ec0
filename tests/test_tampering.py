"""A run tampered with, or holding odd files, as a user meets it through the command line: a damaged
DONE record, a FIFO where a file should be, a run path that is a file, a DONE that is a directory, a
JSON file damaged by hand, a symbolic link planted in the run. Each ends in one line naming what is
wrong, within a timeout (a FIFO must never block), and never deletes or writes outside the run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rationale_loop.config.errors import CheckpointError, DataError
from rationale_loop.run.integrity import DONE, check_checkpoint, describe_files, mark_done
from rationale_loop.run.lock import lock_holder, run_lock
from rationale_loop.loop import run_loop
from rationale_loop.run.rundir import is_done, keep_complete_questions, next_round, read_rounds, write_rounds_index
from rationale_loop.config.paths import HELD_RUNS, RunPathError, remove
from rationale_loop.run.records import atomic_writer, read_fork_record, read_json, write_json_atomic, write_jsonl_atomic

from conftest import REPO_ROOT
from test_config import compose_config
from test_run_safety import QUICK

TIMEOUT = 120  # a hang fails the test instead of freezing it


def _cli(root: Path, command: str, run: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rationale_loop", command, *QUICK, f"output_root={root}/runs",
                           f"model.cache_dir={root}/models", f"run={run}", *overrides],
                          capture_output=True, text=True, check=False, timeout=TIMEOUT)


def _plain(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A plain command (compare, export), from `cwd` when given: this checkout's code wherever it runs."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.run([sys.executable, "-m", "rationale_loop", *arguments], capture_output=True, text=True, check=False,
                          timeout=TIMEOUT, cwd=cwd, env=env)


def _one_line_error(done: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with exit 1 and one line of error, no traceback; the line holds every needle."""
    assert done.returncode == 1, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("rationale_loop: error:")]
    assert len(errors) == 1 and done.stderr.rstrip().endswith(errors[0]), done.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished SFT round (a few steps) under <root>/runs/base; tests copy it."""
    root = tmp_path_factory.mktemp("tampering")
    run_loop(compose_config(*QUICK, f"output_root={root}/runs", f"model.cache_dir={root}/models", "run=base"))
    return root


def _copy(root: Path, name: str) -> Path:
    shutil.copytree(root / "runs" / "base", root / "runs" / name, symlinks=True)
    return root / "runs" / name


# -- DONE's record --------------------------------------------------------------------------------
def test_done_records_the_round_without_its_own_temporary_file(finished):
    record = json.loads((finished / "runs" / "base" / "round_00" / DONE).read_text())["files"]
    assert "checkpoint/model.safetensors" in record
    assert not [name for name in record if name.endswith(".tmp") or "/." in f"/{name}"], record.keys()
    check_checkpoint(finished / "runs" / "base" / "round_00", "round 0")  # what the current code writes passes


@pytest.mark.slow
def test_an_empty_done_record_stops_the_next_round_naming_it(finished):
    run = _copy(finished, "empty_done")
    (run / "round_00" / DONE).write_text("")
    done = _cli(finished, "round", "empty_done", "rounds=1")
    _one_line_error(done, f"{run / 'round_00' / DONE}", "empty")
    assert not (run / "round_01" / "generations.jsonl").exists(), "nothing is sampled from weights that cannot be checked"


@pytest.mark.parametrize("damage, message", [
    (lambda files: {}, "lists no file"),
    (lambda files: {k: v for k, v in files.items() if not k.startswith("checkpoint/")}, "no checkpoint weights"),
    (lambda files: {k: v for k, v in files.items() if k != "checkpoint/config.json"}, "checkpoint/config.json is in the round but not in DONE's record"),
    (lambda files: {**files, "notes.txt": {"bytes": 1, "sha256": "0" * 64}}, "notes.txt is in DONE's record but not in the round"),
    (lambda files: {**files, "checkpoint/model.safetensors": {"bytes": "many"}}, "the entry for 'checkpoint/model.safetensors'"),
])
def test_a_partial_or_altered_done_record_is_a_damaged_round(finished, tmp_path, damage, message):
    out = tmp_path / "round_00"
    shutil.copytree(finished / "runs" / "base" / "round_00", out)
    files = json.loads((out / DONE).read_text())["files"]
    (out / DONE).write_text(json.dumps({"files": damage(files)}))
    with pytest.raises(CheckpointError, match=message) as raised:
        check_checkpoint(out, "round 0, the start of round 1")
    assert "\n" not in str(raised.value)


def test_a_record_listing_a_file_that_is_not_there_stops_export(finished, tmp_path):
    run = _copy(finished, "listed_missing")
    (run / "round_00" / "eval.jsonl").unlink()
    done = _plain("export", str(run), "--out", str(tmp_path / "export"))
    _one_line_error(done, "eval.jsonl is in DONE's record but not in the round")
    assert not (tmp_path / "export").exists()


def test_an_old_record_listing_its_temporary_file_still_passes(finished, tmp_path):
    """DONE written before the fix listed its own temporary file (".DONE.<random>.tmp", 0 bytes)."""
    out = tmp_path / "round_00"
    shutil.copytree(finished / "runs" / "base" / "round_00", out)
    files = json.loads((out / DONE).read_text())["files"]
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    (out / DONE).write_text(json.dumps({"files": {**files, ".DONE.abc123.tmp": {"bytes": 0, "sha256": empty}}}))
    check_checkpoint(out, "round 0")


def test_mark_done_never_records_leftovers_of_atomic_writes(tmp_path):
    out = tmp_path / "round_00"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "model.safetensors").write_bytes(b"weights")
    (out / ".metrics.json.x1.tmp").write_text("half")
    (out / ".checkpoint.x2").mkdir()
    (out / ".checkpoint.x2" / "model.safetensors").write_bytes(b"staged")
    mark_done(out)
    assert set(json.loads((out / DONE).read_text())["files"]) == {"checkpoint/model.safetensors"}
    assert set(describe_files(out)) == {"checkpoint/model.safetensors"}


# -- odd files ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_done_that_is_a_directory_is_not_finished_and_is_named(finished):
    run = _copy(finished, "done_dir")
    (run / "round_00" / DONE).unlink()
    (run / "round_00" / DONE).mkdir()
    with pytest.raises(CheckpointError, match="is a directory, not the file that marks a finished round"):
        is_done(run, 0)
    done = _cli(finished, "round", "done_dir", "rounds=1")
    _one_line_error(done, f"{run / 'round_00' / DONE} is a directory")


@pytest.mark.slow
def test_a_fifo_as_the_lock_file_is_refused_not_waited_on(finished):
    run = _copy(finished, "fifo_lock")
    (run / ".lock").unlink(missing_ok=True)
    os.mkfifo(run / ".lock")
    done = _cli(finished, "round", "fifo_lock", "rounds=1")
    _one_line_error(done, f"{run / '.lock'} is a FIFO (named pipe), not the run's lock file")
    assert lock_holder(run) is None
    assert not (run / "round_01").exists()


def test_a_symbolic_link_as_the_lock_file_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "elsewhere").write_text("")
    (run / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunPathError, match="is a symbolic link, not the run's lock file"):
        with run_lock(run):
            pass
    assert (tmp_path / "elsewhere").read_text() == ""


@pytest.mark.slow
def test_a_fifo_as_metrics_json_is_refused_not_waited_on(finished):
    run = _copy(finished, "fifo_metrics")
    (run / "round_00" / "metrics.json").unlink()
    os.mkfifo(run / "round_00" / "metrics.json")
    done = _cli(finished, "round", "fifo_metrics", "rounds=1")
    _one_line_error(done, f"{run / 'round_00' / 'metrics.json'} is a FIFO (named pipe), not a regular file")


@pytest.mark.slow
def test_a_run_path_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "afile").write_text("not a run")
    for command in ("round", "inspect"):
        done = _cli(tmp_path, command, "afile")
        _one_line_error(done, f"{tmp_path / 'runs' / 'afile'} is a regular file, not a run directory")
    assert (tmp_path / "runs" / "afile").read_text() == "not a run"
    with pytest.raises(RunPathError, match="is a regular file, not a run directory"):
        with run_lock(tmp_path / "runs" / "afile"):
            pass


@pytest.mark.slow
def test_a_round_path_that_is_a_file_is_one_line_and_kept(finished):
    run = _copy(finished, "round_file")
    (run / "round_01").write_text("not a round")
    done = _cli(finished, "loop", "round_file", "rounds=1")
    _one_line_error(done, f"{run / 'round_01'} is a regular file, not a round directory; move it away, "
                          "and the next command runs round 1 again")
    assert (run / "round_01").read_text() == "not a round"


# -- JSON damaged by hand -------------------------------------------------------------------------
@pytest.mark.slow
def test_a_damaged_metrics_json_names_the_file_line_and_column(finished):
    run = _copy(finished, "bad_metrics")
    path = run / "round_00" / "metrics.json"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rstrip(",")  # a comma deleted by hand
    path.write_text("\n".join(lines) + "\n")
    done = _cli(finished, "round", "bad_metrics", "rounds=1")
    _one_line_error(done, f"{path}: not valid JSON (line 4, column 3: Expecting ',' delimiter)", "restore it")


def test_a_damaged_rounds_index_names_the_file_and_line(finished, tmp_path):
    run = _copy(finished, "bad_index")
    (run / "rounds.jsonl").write_text('{"round": 0, "eval_accuracy": 0.1}\n{"round": 1, "eval_acc\n')
    with pytest.raises(DataError, match=rf"{run / 'rounds.jsonl'}:2: not valid JSON .*rebuilds it"):
        read_rounds(run)
    # compare skips the run with a warning naming file and line, then has nothing. The path is shown relative
    # to the working directory only below it; from anywhere else (here a folder beside the run's, as a
    # checkout elsewhere is), absolute, never climbing out with "../".
    for cwd, path in ((run.parent, "bad_index/rounds.jsonl"), (tmp_path, f"{run.resolve()}/rounds.jsonl")):
        done = _plain("compare", str(run), cwd=cwd)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        assert f"skipped {Path(path).parent}: its rounds.jsonl cannot be read ({path}:2: not valid JSON" in done.stderr, (cwd, done.stderr)
    write_rounds_index(run)  # what the next writing command does: derived, so rebuilt whole
    assert [row["round"] for row in read_rounds(run)] == [0]


@pytest.mark.slow
def test_a_damaged_eval_jsonl_of_an_interrupted_round_names_the_file_and_line(finished):
    """Killed after evaluating, before DONE: the next call reads eval.jsonl back."""
    run = _copy(finished, "bad_eval")
    (run / "round_00" / DONE).unlink()
    (run / "round_00" / "metrics.json").unlink()
    path = run / "round_00" / "eval.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][: len(lines[1]) // 2] + "\n"
    path.write_text("".join(lines))
    done = _cli(finished, "sft", "bad_eval")
    _one_line_error(done, f"{path}:2: not valid JSON", "restore it")


@pytest.mark.parametrize("name, saved, message", [
    ("unknown_key", "- sft.lr=1e-3\n- nonsense.key=1\n", "unknown config key 'nonsense.key'"),
    ("hydra_key", "- sft.lr=1e-3\n- hydra.run.dir={elsewhere}\n", "'hydra.run.dir={elsewhere}' is never saved by a round"),
    ("output_root", "- sft.lr=1e-3\n- output_root={elsewhere}\n", "'output_root={elsewhere}' is never saved by a round"),
    ("not_a_list", "sft.lr: 1e-3\n", "expected a list of overrides (strings)"),
])
@pytest.mark.slow
def test_a_tampered_overrides_file_is_one_line_naming_it_and_never_applied(finished, tmp_path, name, saved, message):
    """round_KK/overrides.yaml, which later commands start from (run_config.py), edited by hand."""
    run = _copy(finished, f"overrides_{name}")
    elsewhere = tmp_path / "elsewhere"
    path = run / "round_00" / "overrides.yaml"
    path.write_text(saved.format(elsewhere=elsewhere))
    done = _cli(finished, "loop", run.name)
    _one_line_error(done, f"{path}: {message.format(elsewhere=elsewhere)}", "restore it or delete it")
    assert not elsewhere.exists() and path.read_text() == saved.format(elsewhere=elsewhere)


def test_read_json_names_file_line_and_column_and_refuses_what_is_not_an_object(tmp_path):
    path = tmp_path / "round_03" / "stats.json"
    path.parent.mkdir()
    path.write_text('{\n  "samples": 3\n  "valid": 1\n}\n')
    with pytest.raises(DataError) as raised:
        read_json(path)
    assert str(raised.value) == (f"{path}: not valid JSON (line 3, column 3: Expecting ',' delimiter); "
                                 "restore it from a copy, or delete the round")
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="not a JSON object but list"):
        read_json(path)
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(DataError, match=r"not valid UTF-8 \(line 1, column 8"):
        read_json(path)
    path.unlink()
    path.mkdir()
    with pytest.raises(DataError, match="is a directory, not a regular file"):
        read_json(path)


def test_a_damaged_fork_record_is_a_data_error_naming_it(tmp_path):
    record = tmp_path / "fork.json"
    for text in ("{not json", '{"from": 3}', "[]"):
        record.write_text(text)
        with pytest.raises(DataError, match=str(record)):
            read_fork_record(record)
    record.write_text(json.dumps({"from": str(tmp_path / "base" / "round_01"), "round": 1}))
    assert read_fork_record(record)["round"] == 1


def test_a_damaged_line_of_an_interrupted_generation_file_names_it(tmp_path):
    partial = tmp_path / "generations.jsonl.partial"
    partial.write_text('{"question_id": "a"}\n{"question_id": "a",, }\n{"question_id": "b"}\n')
    with pytest.raises(DataError, match=rf"{partial}:2: not valid JSON"):
        keep_complete_questions(partial, 1)


# -- links planted in a run -----------------------------------------------------------------------
@pytest.mark.slow
def test_a_planted_tensorboard_link_is_never_deleted_through_nor_written_through_with_force(finished, tmp_path):
    run = _copy(finished, "planted")
    outside = tmp_path / "outside"
    (outside / "round_00").mkdir(parents=True)
    (outside / "canary").write_text("alive")
    (outside / "round_00" / "canary").write_text("alive")
    shutil.rmtree(run / "tensorboard")
    (run / "tensorboard").symlink_to(outside, target_is_directory=True)
    # round 0 interrupted, with another config: force=true clears it, and its tensorboard directory
    (run / "round_00" / DONE).unlink()
    before = sorted(p.relative_to(outside) for p in outside.rglob("*"))
    done = _cli(finished, "sft", "planted", "sft.lr=1e-3", "force=true")
    _one_line_error(done, f"{run / 'tensorboard'} is a symbolic link to {outside}")
    assert (outside / "canary").read_text() == "alive" and (outside / "round_00" / "canary").read_text() == "alive"
    assert sorted(p.relative_to(outside) for p in outside.rglob("*")) == before, "nothing new is written outside"
    assert (run / "round_00" / "checkpoint").is_dir(), "the refused call cleared nothing"


def test_remove_refuses_a_path_through_a_link_out_of_the_held_run(tmp_path):
    """What Run._resumable does with force=true: remove(run/tensorboard/round_01, inside=run/tensorboard)."""
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    (outside / "round_01").mkdir(parents=True)
    (outside / "round_01" / "canary").write_text("alive")
    (run / "tensorboard").symlink_to(outside, target_is_directory=True)
    HELD_RUNS.append(run)
    try:
        with pytest.raises(RunPathError, match=r"tensorboard is a symbolic link to .*outside, out of"):
            remove(run / "tensorboard" / "round_01", inside=run / "tensorboard")
        with pytest.raises(RunPathError, match="refusing to write"):
            write_json_atomic(run / "tensorboard" / "x.json", {})
    finally:
        HELD_RUNS.remove(run)
    remove(run / "tensorboard", inside=run)  # the link itself goes, as a link
    assert (outside / "round_01" / "canary").read_text() == "alive" and not (run / "tensorboard").exists()


def test_writers_refuse_a_symbolic_link_or_an_odd_file_at_the_name(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("keep")
    (tmp_path / "metrics.json").symlink_to(outside)
    for write in (lambda p: write_json_atomic(p, {"a": 1}), lambda p: write_jsonl_atomic(p, [{"a": 1}])):
        with pytest.raises(RunPathError, match="is a symbolic link to .*outside.json, not a regular file"):
            write(tmp_path / "metrics.json")
    os.mkfifo(tmp_path / "pipe.json")
    with pytest.raises(RunPathError, match="is a FIFO"):
        with atomic_writer(tmp_path / "pipe.json") as handle:
            handle.write("x")
    assert outside.read_text() == "keep" and (tmp_path / "metrics.json").is_symlink()
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_fork_whose_rounds_are_links_is_still_read_and_locked(finished, tmp_path):
    """The deliberate links (a fork's rounds) pass: the fork's own lock, rounds index and DONE checks."""
    from rationale_loop.run.rundir import fork

    run = tmp_path / "runs" / "fork"
    with run_lock(run):
        fork(run, finished / "runs" / "base" / "round_00")
    assert (run / "round_00").is_symlink() and is_done(run, 0) and next_round(run) == 1
    check_checkpoint(run / "round_00", "round 0 of a fork")
    with run_lock(run):
        pass


def test_a_pair_naming_a_sample_that_is_not_there_names_the_file_and_line(tmp_path):
    """pairs.jsonl edited by hand (or copied from another round): inspect and report stop in one line."""
    from test_views import make_run

    run = make_run(tmp_path / "runs" / "r")
    pairs = run / "round_01" / "pairs.jsonl"
    pair = json.loads(pairs.read_text())
    pairs.write_text(json.dumps(pair) + "\n" + json.dumps({**pair, "chosen_sample_index": 99}) + "\n")
    where = [f"output_root={tmp_path}/runs", "run=r"]
    for done in (_plain("inspect", *where, "inspect.round=1"), _plain("report", *where)):
        _one_line_error(done, f"{pairs}:2: chosen_sample_index 99 names no sample of question 'q1' in the round's generations.jsonl",
                        "restore it from a copy, or delete the round")
    assert not (run / "report.html").exists()
