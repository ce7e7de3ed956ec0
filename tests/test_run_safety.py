"""One process at a time on a run (two real processes), deletion that never leaves the run or follows a
link, and `make clean-run` that deletes a run and nothing else."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rationale_loop.cleanup import delete_run
from rationale_loop.config.errors import RunLockedError, UserError
from rationale_loop.run.faults import KILL_AT, WAIT_AT
from rationale_loop.run.lock import lock_holder, run_lock
from rationale_loop.config.paths import RunPathError, remove

from test_end_to_end import SMALL

# SFT only, a few steps: the test is about who may write the run, not about what it learns.
QUICK = [*SMALL, "rounds=0", "sft.steps=3", "task.sft_size=64", "task.eval_size=8"]


def _command(name: str, root: Path, run: str) -> list[str]:
    return [sys.executable, "-m", "rationale_loop", name, *QUICK, f"output_root={root}/runs",
            f"model.cache_dir={root}/models", f"run={run}"]


def _wait_for(condition, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_second_process_on_a_live_run_is_refused_and_the_first_finishes_intact(tmp_path):
    release = tmp_path / "release"
    env = {k: v for k, v in os.environ.items() if k not in (KILL_AT, WAIT_AT)}
    # The first process stops inside SFT's first optimizer step until the test lets it go on.
    first = subprocess.Popen(_command("sft", tmp_path, "shared"), env={**env, WAIT_AT: f"train_step:{release}"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "runs" / "shared"
    try:
        _wait_for(lambda: (lock_holder(run) or {}).get("pid") == first.pid or first.poll() is not None)
        assert first.poll() is None, first.communicate()
        second = subprocess.run(_command("round", tmp_path, "shared"), env=env, capture_output=True, text=True, check=False)
        assert second.returncode == 1
        assert second.stderr.startswith(f"rationale_loop: error: {run} is in use by process {first.pid}")
        assert "Traceback" not in second.stderr and not (run / "round_00" / "DONE").exists()
    finally:
        release.touch()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert (run / "round_00" / "DONE").exists()
    assert json.loads((run / "round_00" / "metrics.json").read_text())["train_steps"] == 3
    assert lock_holder(run) is None, "a finished holder leaves the lock file empty"


def test_the_lock_of_a_killed_holder_is_taken_over(tmp_path):
    run = tmp_path / "run"
    holder = (
        "import os, signal, sys; from pathlib import Path; from rationale_loop.run.lock import run_lock\n"
        "with run_lock(Path(sys.argv[1])):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.Popen([sys.executable, "-c", holder, str(run)])
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert lock_holder(run)["pid"] == killed.pid, "the dead holder's record is still there"
    with run_lock(run):
        assert lock_holder(run)["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match=f"in use by process {os.getpid()}"):
            # A second holder, even in the same process (flock is per open file), is refused.
            with run_lock(run):
                pass


def test_removing_a_link_never_touches_what_it_points_at(tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("data")
    run = tmp_path / "runs" / "r"
    (run / "round_01").mkdir(parents=True)
    (run / "round_01" / ".leftover.tmp").symlink_to(outside / "keep.txt")
    (run / "round_01" / ".staging").symlink_to(outside, target_is_directory=True)
    (run / "round_02").symlink_to(outside, target_is_directory=True)
    from rationale_loop.run.rundir import remove_leftovers

    remove_leftovers(run / "round_01")
    remove(run / "round_02", inside=run)
    assert (outside / "keep.txt").read_text() == "data"
    assert not any(p.is_symlink() for p in run.rglob("*"))
    with pytest.raises(RunPathError, match="not inside"):
        remove(outside / "keep.txt", inside=run)


def test_clean_run_deletes_a_fork_without_its_source_and_refuses_everything_else(tmp_path):
    root = tmp_path / "outputs" / "runs"
    source = root / "base"
    (source / "round_00" / "checkpoint").mkdir(parents=True)
    (source / "round_00" / "DONE").write_text("")
    fork = root / "fork"
    fork.mkdir()
    (fork / "round_00").symlink_to(os.path.relpath(source / "round_00", fork), target_is_directory=True)
    (fork / "fork.json").write_text("{}")
    not_a_run = root / "notes"
    not_a_run.mkdir()
    (tmp_path / "conf").mkdir()

    for name, message in [("", "a run needs a name"), ("../../conf", "leaves output_root"), ("/tmp", "absolute path"),
                          ("notes", "not a run directory"), ("missing", "does not exist")]:
        with pytest.raises(UserError, match=message):
            delete_run(str(root), name)
    assert (tmp_path / "conf").exists() and not_a_run.exists()

    delete_run(str(root), "fork")
    assert not fork.exists() and (source / "round_00" / "DONE").exists()
    with run_lock(source):
        with pytest.raises(RunLockedError, match="not deleting it"):
            delete_run(str(root), "base")
    delete_run(str(root), "base")
    assert not source.exists()


def test_make_clean_run_deletes_only_a_run_named_with_run(tmp_path):
    """Without RUN=, the Makefile's `RUN ?= default` would name the run `make loop` made: refused, nothing deleted."""
    from conftest import REPO_ROOT

    root = tmp_path / "runs"
    for name in ("default", "other"):
        (root / name / "round_00").mkdir(parents=True)
    # Neither a RUN of the caller's environment nor the variables of a make that runs this suite reach the target.
    env = {k: v for k, v in os.environ.items() if k not in ("RUN", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def make(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "--no-print-directory", "-C", str(REPO_ROOT), "-o", ".venv/.installed",
                               f"BIN={Path(sys.executable).parent}", "clean-run", f"OUTPUT_ROOT={root}", *args],
                              capture_output=True, text=True, check=False, env={**env, **extra}, timeout=120)

    done = make()
    assert done.returncode != 0 and "make clean-run needs RUN=name" in done.stderr and "nothing was deleted" in done.stderr
    assert "rationale_loop" not in done.stdout, "the tool never ran"
    assert (root / "default").is_dir() and (root / "other").is_dir()
    done = make("RUN=other")
    assert done.returncode == 0, done.stderr
    assert not (root / "other").exists() and (root / "default").is_dir()
    done = make(RUN="default")  # named in the environment: the user's own choice too
    assert done.returncode == 0, done.stderr
    assert not (root / "default").exists()


def test_make_clean_run_refuses_an_empty_run(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rationale_loop", "clean", "", "--root", str(tmp_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1 and done.stderr.strip() == "rationale_loop: error: run='': a run needs a name (a relative path inside output_root)"
