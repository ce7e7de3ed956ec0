"""`make clean-run`: whole runs only, never a run others are forked from (without --force), links removed as links."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _clean(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rationale_loop", "clean", *args], capture_output=True, text=True, check=False)


def _run(root: Path, name: str) -> Path:
    run = root / name
    (run / "round_00" / "checkpoint").mkdir(parents=True)
    (run / "round_00" / "DONE").write_text("")
    return run


def test_a_round_is_refused_naming_its_run_and_a_forked_run_naming_its_fork(tmp_path):
    root = tmp_path / "runs"
    base = _run(root, "team/base")
    fork = root / "fork"
    fork.mkdir(parents=True)
    (fork / "round_00").symlink_to(os.path.relpath(base / "round_00", fork), target_is_directory=True)
    (fork / "fork.json").write_text(json.dumps({"from": str((base / "round_00").resolve()), "round": 0}))
    canary = base / "round_00" / "canary.txt"
    canary.write_text("keep")

    done = _clean("team/base/round_00", "--root", str(root))
    assert done.returncode == 1 and "inside the run" in done.stderr and str(base) in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = _clean("team/base", "--root", str(root))
    assert done.returncode == 1 and str(fork) in done.stderr and "forks" in done.stderr
    assert canary.exists()
    done = _clean("team/base", "--root", str(root), "--force")
    assert done.returncode == 0, done.stderr
    assert not base.exists() and str(fork) in done.stderr and fork.is_dir()


def test_a_link_inside_a_run_is_removed_as_a_link(tmp_path):
    root = tmp_path / "runs"
    run = _run(root, "r")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text("keep")
    (run / "round_00" / "data").symlink_to(outside, target_is_directory=True)
    (run / "elsewhere").symlink_to(outside, target_is_directory=True)
    done = _clean("r", "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert not run.exists() and (outside / "canary.txt").read_text() == "keep"
