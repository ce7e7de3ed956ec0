"""The daily workflow through the real CLI and make: a run remembers its overrides, `make data` then the
loop, a failed first command that leaves the name usable, read-only commands and refused configs that
create nothing, ARGS that the shell does not expand, and Ctrl-C. Every run here is a few seconds of a
tiny model (TINY), so the tests check the mechanics, never what the model learns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO_ROOT
from rationale_loop.run.faults import WAIT_AT

# Every test here drives whole runs through make or the CLI (over ~7 s each on 2 cores): `make test-slow`.
pytestmark = pytest.mark.slow

TINY = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=2",
        "task.sft_size=200", "task.pool_size=8", "task.eval_size=8", "sft.steps=5", "sft.batch_size=8",
        "sft.micro_batch_size=8", "rank.steps=2", "rank.epochs=1", "generate.n=2", "generate.max_new_tokens=16",
        "eval.max_new_tokens=16"]


def _cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rationale_loop", *args], capture_output=True, text=True,
                          check=False, cwd=cwd, timeout=600)


def _make(*args: str) -> subprocess.CompletedProcess:
    """A make target as a user types it, with this interpreter's environment and no reinstall."""
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", f"BIN={Path(sys.executable).parent}", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=600)


def _where(tmp_path: Path, run: str = "w") -> list[str]:
    return [f"output_root={tmp_path}/runs", f"model.cache_dir={tmp_path.parent}/workflow_models", f"run={run}"]


def _one_line(stderr: str) -> str:
    """The tool's own words on stderr (libraries' progress bars aside): exactly one line, no traceback."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def test_later_rounds_remember_the_run_overrides_and_a_new_one_is_a_kept_change(tmp_path):
    first = _cli("loop", *TINY, "rounds=1", *_where(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "runs" / "w"
    # `make round` with nothing retyped: the run's own recipe, not the defaults (README's `make round RUN=w1`)
    again = _cli("round", "rounds=2", *_where(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "with its saved overrides" in again.stdout and "model.hidden_size=64" in again.stdout
    second = OmegaConf.load(run / "round_02" / "config.yaml")
    assert second.model.hidden_size == 64 and second.task.eval_size == 8 and second.rank.steps == 2
    # A new value is a deliberate change: shown, run, and kept for the rounds after it.
    changed = _cli("round", "rounds=3", "rank.lr=1e-5", *_where(tmp_path))
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "changes the config" in changed.stdout + changed.stderr and "rank.lr" in changed.stdout + changed.stderr
    kept = _cli("round", "rounds=4", *_where(tmp_path))
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert OmegaConf.load(run / "round_04" / "config.yaml").rank.lr == 1e-5
    assert OmegaConf.load(run / "round_04" / "config.yaml").model.hidden_size == 64
    # Past the rounds asked for: said once, in words that say how to go on.
    for command in ("round", "loop"):
        done = _cli(command, *_where(tmp_path))
        assert done.returncode == 0 and "are done; rounds=5 runs round 5" in done.stdout and "next is" not in done.stdout
    # Hydra keeps nothing of its own in the run (inspect and report used to overwrite .hydra/overrides.yaml).
    assert _cli("inspect", *_where(tmp_path)).returncode == 0
    assert not (run / ".hydra").exists() and (run / "rationale_loop.log").is_file()


def test_a_remembered_override_is_dropped_by_a_new_option_or_by_tilde_and_a_typed_one_is_refused(tmp_path):
    first = _cli("sft", *TINY, "objective.rank_weight=2", "rank.lr=1e-5", *_where(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "runs" / "w"
    # Typed with an option that does not read it: refused as ever, before any work.
    typed = _cli("round", "rounds=1", "objective=star", "objective.rank_weight=2", *_where(tmp_path))
    assert typed.returncode == 1 and "objective.rank_weight does nothing under objective.name=star" in _one_line(typed.stderr)
    assert not (run / "round_01").exists()
    # Remembered, it is dropped in one line; `~rank.lr` drops the remembered rank.lr (the default applies again).
    done = _cli("round", "rounds=1", "objective=star", "~rank.lr", *_where(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("objective.name=star does not read objective.rank_weight (objective.rank_weight=2, remembered from "
            f"{run / 'round_00'}): dropped") in done.stdout
    assert f"~rank.lr: rank.lr=1e-5 (remembered from {run / 'round_00'}) dropped" in done.stdout
    saved = OmegaConf.load(run / "round_01" / "overrides.yaml")
    assert "objective=star" in saved and not any(o.startswith(("objective.rank_weight", "rank.lr", "~")) for o in saved)
    assert OmegaConf.load(run / "round_01" / "config.yaml").rank.lr == 3e-4  # the embedded default's (experiment=tiny_arith)
    # Nothing left to drop: one line, not Hydra's "does not support deletion".
    again = _cli("round", "rounds=2", "~rank.lr", *_where(tmp_path))
    assert again.returncode == 1 and "~rank.lr drops an override the run remembers" in _one_line(again.stderr)


def test_piped_output_holds_no_progress_bar(tmp_path):
    """Not on a terminal, nothing of a progress bar is printed: the tokenizer's training (a new model cache),
    SFT, generation, LoRA's adapter and the export's merge; the tool's own lines stay whole."""
    where = [f"output_root={tmp_path}/runs", f"model.cache_dir={tmp_path}/fresh_models", "run=w"]
    trained = _cli("sft", *TINY, "peft=lora", *where)
    exported = _cli("export", "w", "--root", f"{tmp_path}/runs", "--out", f"{tmp_path}/export")
    for done in (trained, exported):
        assert done.returncode == 0, done.stderr[-3000:]
        for stream in (done.stdout, done.stderr):
            assert "\r" not in stream and "it/s" not in stream and "s/it" not in stream and "%|" not in stream, stream[-3000:]
    assert "\n\n" not in trained.stdout.split("held-out accuracy per round")[0], trained.stdout[:3000]


def test_make_data_then_the_loop_with_other_training_settings(tmp_path):
    where = [*TINY, "data=chat_mix", *_where(tmp_path)]
    prepared = _cli("data", *where, "sft.lr=1e-3")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    round0 = tmp_path / "runs" / "w" / "round_00"
    manifest = round0 / "data_manifest.json"
    stamp = manifest.stat().st_mtime_ns
    assert not (round0 / "config.yaml").exists(), "make data records the data settings only"
    assert OmegaConf.load(round0 / "data.yaml")["data.formats"] == ["memphis", "alpaca", "chat-ml"]
    trained = _cli("sft", *where, "sft.lr=2e-3")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert manifest.stat().st_mtime_ns == stamp, "the mix prepared by make data is the one SFT trains on"
    assert OmegaConf.load(round0 / "config.yaml").sft.lr == 2e-3 and (round0 / "DONE").exists()


def test_a_changed_data_setting_prepares_the_mix_again(tmp_path):
    where = [*TINY, "data=chat_mix", *_where(tmp_path)]
    assert _cli("data", *where).returncode == 0
    manifest = tmp_path / "runs" / "w" / "round_00" / "data_manifest.json"
    before = json.loads(manifest.read_text())
    again = _cli("data", *where, "data.multi_format=sample")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "preparing it again" in again.stdout + again.stderr and "multi_format" in again.stdout + again.stderr
    assert json.loads(manifest.read_text()) != before


def test_a_failed_first_command_leaves_the_name_usable(tmp_path):
    missing = tmp_path / "nowhere" / "mine.jsonl"
    failed = _cli("sft", *TINY, f"+data.sources.mine={{path:{missing},schema:alpaca}}", *_where(tmp_path))
    assert failed.returncode == 1
    assert str(missing) in _one_line(failed.stderr)
    fixed = _cli("sft", *TINY, *_where(tmp_path))
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "interrupted" not in fixed.stdout + fixed.stderr
    saved = OmegaConf.load(tmp_path / "runs" / "w" / "round_00" / "overrides.yaml")
    assert not any("data.sources" in override for override in saved), "the failed call's overrides are not remembered"


@pytest.mark.parametrize("args", [
    ["inspect", "run=nosuch"],
    ["report", "run=nosuch"],
    ["loop", "rank.lrr=1e-4"],
    ["loop", "objective=stra"],
    ["loop", "sft.lr=-1"],
    ["loop", "hydra.job.chdir=true"],
    ["loop", "hydra.run.dir=elsewhere"],
], ids=["inspect", "report", "typo", "group-typo", "bad-value", "chdir", "run-dir"])
def test_read_only_commands_and_refused_configs_create_nothing(tmp_path, args):
    before = set(tmp_path.iterdir())
    done = _cli(*args, f"output_root={tmp_path}/runs", f"model.cache_dir={tmp_path}/models", cwd=tmp_path)
    assert done.returncode != 0
    line = _one_line(done.stderr)
    assert set(tmp_path.iterdir()) == before, "nothing is created, not even the runs folder"
    if args[1] == "rank.lrr=1e-4":  # and how to list the keys, with the interpreter the README's setup makes
        assert "did you mean rank.lr?" in line and "`.venv/bin/python -m rationale_loop loop --cfg job` lists every key" in line
    if args[1] == "objective=stra":
        assert "did you mean objective=star?" in line


def test_make_passes_args_without_shell_expansion(tmp_path):
    """The README's `+data.sources.mine={path:...,schema:alpaca}`: bash would brace-expand it into two words."""
    rows = tmp_path / "mine.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"Add {i} and 1.", "output": f"{i + 1}"}) + "\n" for i in range(6)))
    args = " ".join([*TINY, f"model.cache_dir={tmp_path}/models", f"+data.sources.mine={{path:{rows},schema:alpaca}}",
                     "data.formats=[chat-ml]"])
    done = _make("data", "RUN=braces", f"OUTPUT_ROOT={tmp_path}/runs", f"ARGS={args}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    manifest = json.loads((tmp_path / "runs" / "braces" / "round_00" / "data_manifest.json").read_text())
    assert "mine" in manifest["sources"] and manifest["formats"]


def test_ctrl_c_ends_with_one_line_and_the_same_command_goes_on(tmp_path):
    """Under make, as a user presses it: SIGINT to make, its shell and the tool at once (a terminal's
    foreground process group). The tool's one line, and no "make: *** ... Error 130" after it."""
    run = tmp_path / "runs" / "w"
    slow = [*TINY, "rounds=1", "task.pool_size=64", "generate.n=8", "generate.max_new_tokens=48", "generate.batch_size=8",
            f"model.cache_dir={tmp_path.parent}/workflow_models"]
    # Held inside sampling (after the first question's samples are written) until interrupted: the signal
    # lands mid-phase on any machine, however fast it samples (rationale_loop/run/faults.py).
    never = tmp_path / "never-released"
    # Ctrl-C as in a terminal: SIGINT handled by default in make even when this suite was started with it
    # ignored (a background job of a non-interactive shell, `cmd &`), which make would inherit; make in a
    # process group of its own, which the signal is sent to.
    process = subprocess.Popen(["make", "--no-print-directory", "-o", ".venv/.installed", f"BIN={Path(sys.executable).parent}",
                                "loop", "RUN=w", f"OUTPUT_ROOT={tmp_path}/runs", f"ARGS={' '.join(slow)}"],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, WAIT_AT: f"generate:{never}"}, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    partial = run / "round_01" / "generations.jsonl.partial"
    deadline = time.monotonic() + 300
    while not partial.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it reached sampling"
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    # make ends as interrupted (a calling shell sees 130), which it does only when the tool exited 130.
    assert process.returncode == -signal.SIGINT, stderr[-3000:]
    line = _one_line(stderr)
    assert line.startswith("rationale_loop: interrupted") and f"make round RUN=w" in line
    assert not (run / "round_01" / "DONE").exists()
    resumed = _cli("round", *_where(tmp_path))  # nothing retyped: the interrupted round's overrides
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "going on from where it stopped" in resumed.stdout + resumed.stderr
    assert (run / "round_01" / "DONE").exists()
