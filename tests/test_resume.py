"""A run killed with SIGKILL in every phase, resumed each time, ends with the same artifacts as a run
that was never interrupted.

The kills are real: RATIONALE_LOOP_KILL_AT makes the process send itself SIGKILL at a named point
(rationale_loop/run/faults.py), so no exception handler or cleanup runs, as with the OOM killer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rationale_loop.run.faults import KILL_AT
from rationale_loop.run.rundir import keep_complete_questions

from test_end_to_end import SMALL

# Small generation batches, so a resumed generation skips whole batches and redoes the one in flight;
# training states every 2 steps, so a resumed training phase starts from a saved state, not step 0.
RESUME = [*SMALL, "generate.batch_size=8", "sft.save_every=2", "rank.save_every=2", "rank.batch_size=8", "rank.micro_batch_size=8"]

# (kill point, what must be on disk after the kill): one per phase, in the order a round meets them.
KILLS = [
    ("train_step:5", lambda run: (run / "round_00/train_state.pt").exists() and not (run / "round_00/checkpoint").exists()),
    ("generate:11", lambda run: _lines(run / "round_01/generations.jsonl.partial") >= 10 * 8),
    ("generated", lambda run: (run / "round_01/generations.jsonl").exists() and not (run / "round_01/pairs.jsonl").exists()),
    ("mined", lambda run: (run / "round_01/stats.json").exists() and not (run / "round_01/train_state.pt").exists()),
    ("train_step:3", lambda run: (run / "round_01/train_state.pt").exists() and not (run / "round_01/checkpoint").exists()),
    ("trained", lambda run: (run / "round_01/checkpoint").exists() and not (run / "round_01/eval.jsonl").exists()
                            and not (run / "round_01/train_state.pt").exists()),
    ("evaluated", lambda run: (run / "round_01/eval.jsonl").exists() and not (run / "round_01/DONE").exists()),
]
SAME_BYTES = [
    "round_00/eval.jsonl", "round_00/checkpoint/model.safetensors",
    "round_01/generations.jsonl", "round_01/pairs.jsonl", "round_01/stats.json", "round_01/eval.jsonl",
    "round_01/checkpoint/model.safetensors",
]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _loop(root: Path, run: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    if kill_at:
        env[KILL_AT] = kill_at
    command = [sys.executable, "-m", "rationale_loop", "loop", *RESUME,
               f"output_root={root}/runs", f"model.cache_dir={root}/models", f"run={run}"]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def _metrics(path: Path) -> dict:
    metrics = json.loads(path.read_text())
    # Wall times are the one thing allowed to differ (and a resumed call times only the phases it ran).
    return {key: value for key, value in metrics.items() if not key.endswith("_seconds")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """An uninterrupted run, and the same run killed once in every phase and resumed each time; the
    output of every call is kept, and a copy of the run as the kill after generation left it."""
    root = tmp_path_factory.mktemp("resume")
    straight = _loop(root, "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    run, calls = root / "runs" / "killed", {}
    for point, on_disk in KILLS:
        calls[point] = killed = _loop(root, "killed", kill_at=point)
        assert killed.returncode == -signal.SIGKILL, f"{point}: exit {killed.returncode}\n{killed.stderr[-3000:]}"
        assert on_disk(run), f"after a kill at {point}, the run directory is not as that phase leaves it"
        if point == "generated":
            shutil.copytree(run, root / "runs" / "changed", symlinks=True)
        if point == "mined":  # what a kill inside an atomic write leaves behind
            (run / "round_01/.checkpoint.x1y2").mkdir()
            (run / "round_01/.train_state.pt.x1y2.tmp").write_bytes(b"half")
    calls["finish"] = _loop(root, "killed")
    assert calls["finish"].returncode == 0, calls["finish"].stderr[-3000:]
    return {"root": root, "straight": root / "runs" / "straight", "killed": run, "calls": calls}


@pytest.mark.slow
def test_sigkill_in_every_phase_then_resume_equals_an_uninterrupted_run(runs):
    run, straight = runs["killed"], runs["straight"]
    for name in SAME_BYTES:
        assert (run / name).read_bytes() == (straight / name).read_bytes(), name
    for k in (0, 1):
        assert _metrics(run / f"round_{k:02d}/metrics.json") == _metrics(straight / f"round_{k:02d}/metrics.json")
        assert not (run / f"round_{k:02d}/train_state.pt").exists()
    assert _lines(run / "rounds.jsonl") == 2
    assert not list((run / "round_01").glob(".*")), "leftovers of interrupted atomic writes are removed on resume"


@pytest.mark.slow
def test_resumed_phases_do_not_redo_finished_work(runs):
    """What the call after each kill kept, from its log: sampled questions, training steps."""
    calls = runs["calls"]
    def log(point):
        return calls[point].stdout + calls[point].stderr
    # The call after the kill at generate:11 is the one killed at "generated".
    assert "of 32 questions were already sampled" in log("generated")
    assert "sft: resuming from step 4 of" in log("generate:11")
    assert "round 1: resuming from step 2 of" in log("trained")
    # After the kill at "trained", the next call only evaluates; after "evaluated", it only finishes.
    assert "resuming" not in log("evaluated") and "sampling" not in log("evaluated")
    assert re.search(r"held-out accuracy [0-9.]+ \(", log("evaluated"))
    assert not re.search(r"held-out accuracy [0-9.]+ \(", log("finish"))


@pytest.mark.slow
def test_an_interrupted_round_with_another_config_is_refused_then_cleared_with_force(runs):
    root, run = runs["root"], runs["root"] / "runs" / "changed"
    command = [sys.executable, "-m", "rationale_loop", "round", *RESUME, "rank.lr=1e-3",
               f"output_root={root}/runs", f"model.cache_dir={root}/models", "run=changed"]
    refused = subprocess.run(command, capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and "rank.lr" in refused.stderr and "was interrupted" in refused.stderr
    assert (run / "round_01/generations.jsonl").exists(), "a refused call must not touch the round"
    forced = subprocess.run([*command, "force=true", "generate.n=2"], capture_output=True, text=True, check=False)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "clearing the interrupted" in forced.stdout + forced.stderr
    assert _lines(run / "round_01/generations.jsonl") == 32 * 2


def test_keep_complete_questions_drops_cut_off_rows_and_lines(tmp_path):
    partial = tmp_path / "generations.jsonl.partial"
    rows = [{"question_id": "a", "sample_index": i} for i in range(3)] + [{"question_id": "b", "sample_index": 0}]
    partial.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"question_id": "b", "sam')
    assert keep_complete_questions(partial, 3) == {"a"}
    assert [json.loads(line)["question_id"] for line in partial.read_text().splitlines()] == ["a"] * 3
    assert keep_complete_questions(tmp_path / "absent", 3) == set()
