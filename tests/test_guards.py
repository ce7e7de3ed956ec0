"""Nothing non-finite is applied, saved or written; a training state is loaded without running code;
a finished round's checkpoint is checked before the next round loads it; a round with nothing to train
on finishes with its reason; a prompt too long for the model is skipped or refused, never generated from."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from rationale_loop.config.schema import TrainConfig
from rationale_loop.data.formats import TINYCOT
from rationale_loop.config.errors import CheckpointError, NonFiniteError, UserError
from rationale_loop.loop import run_loop
from rationale_loop.training.objectives import SupervisedObjective
from rationale_loop.data.prompt_budget import fitting
from rationale_loop.run.records import Problem, write_json_atomic
from rationale_loop.training.train import train

from test_config import compose_config
from test_run_safety import QUICK
from test_train import ITEMS, tiny_model, tokenizer  # noqa: F401 (a fixture)


def _cfg(root: Path, run: str, *overrides: str):
    return compose_config(*QUICK, f"output_root={root}/runs", f"model.cache_dir={root}/models", f"run={run}", *overrides)


def test_a_diverging_step_stops_sft_before_it_is_applied_and_nothing_is_saved(tmp_path):
    # At LR 1e30 the first AdamW step moves every weight by about 1e30 (still finite); the second
    # forward pass overflows.
    cfg = _cfg(tmp_path, "nan", "sft.lr=1e30", "sft.save_every=1")
    with pytest.raises(NonFiniteError, match=r"sft: the loss or gradient is not finite at step 2 of 3 .*nothing of this step was applied"):
        run_loop(cfg)
    out = tmp_path / "runs" / "nan" / "round_00"
    assert not (out / "checkpoint").exists() and not (out / "DONE").exists() and not (out / "metrics.json").exists()
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert len(state["history"]) == 1, "the last good state is the step before the bad one"
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_json_never_holds_nan(tmp_path):
    with pytest.raises(ValueError, match="not writing .*metrics.json"):
        write_json_atomic(tmp_path / "metrics.json", {"train_loss": math.nan})
    assert not (tmp_path / "metrics.json").exists()


def test_a_planted_pickle_in_a_training_state_is_refused_without_running(tmp_path, tokenizer):  # noqa: F811
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    state = tmp_path / "train_state.pt"
    torch.save({"history": [], "payload": Payload()}, state)
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=2, micro_batch_size=2, max_length=128, save_every=1)
    with pytest.raises(CheckpointError, match="is not a training state this tool wrote"):
        train(tiny_model(tokenizer), tokenizer, ITEMS, SupervisedObjective(), cfg, seed=0, desc="sft", state_path=state)
    assert not marker.exists()


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    """A finished SFT round; round 1's pool prompts leave less than generate.max_new_tokens of the
    tiny model's 256-token context."""
    root = tmp_path_factory.mktemp("guards")
    run_loop(_cfg(root, "base", "generate.max_new_tokens=250"))
    return root


def _copy(root: Path, name: str) -> Path:
    shutil.copytree(root / "runs" / "base", root / "runs" / name, symlinks=True)
    return root / "runs" / name


def test_done_records_every_file_of_the_round(sft_run):
    done = json.loads((sft_run / "runs" / "base" / "round_00" / "DONE").read_text())["files"]
    assert {"checkpoint/model.safetensors", "metrics.json", "eval.jsonl", "config.yaml"} <= done.keys()
    weights = sft_run / "runs" / "base" / "round_00" / "checkpoint" / "model.safetensors"
    assert done["checkpoint/model.safetensors"]["bytes"] == weights.stat().st_size


def test_a_truncated_checkpoint_is_named_before_the_next_round_loads_it(sft_run):
    run = _copy(sft_run, "truncated")
    weights = run / "round_00" / "checkpoint" / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(CheckpointError, match=rf"checkpoint/model.safetensors has {size // 2} bytes, {size} when the round finished"):
        run_loop(_cfg(sft_run, "truncated", "rounds=1", "generate.max_new_tokens=250"))
    assert not (run / "round_01" / "generations.jsonl").exists()


def test_a_changed_checkpoint_is_named_too(sft_run):
    run = _copy(sft_run, "changed")
    weights = run / "round_00" / "checkpoint" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors has changed since the round finished"):
        run_loop(_cfg(sft_run, "changed", "rounds=1", "generate.max_new_tokens=250"))


def test_a_round_whose_prompts_are_all_too_long_finishes_with_its_reason_and_the_loop_goes_on(sft_run):
    run = _copy(sft_run, "too_long")
    rows = run_loop(_cfg(sft_run, "too_long", "rounds=2", "generate.max_new_tokens=250"))
    assert [row["round"] for row in rows] == [0, 1, 2]
    for k in (1, 2):
        metrics = json.loads((run / f"round_{k:02d}" / "metrics.json").read_text())
        assert metrics["skipped_too_long"] == 32 and metrics["samples"] == 0 and metrics["train_items"] == 0
        assert metrics["note"].startswith("every question of the pool is too long")
        assert metrics["eval_questions"] == 8 and metrics["eval_skipped_too_long"] == 0


def test_too_long_error_names_the_question(sft_run):
    _copy(sft_run, "too_long_error")
    with pytest.raises(UserError, match=r"round 1: the pool: question \S+ has a \d+-token prompt.*256-token context"):
        run_loop(_cfg(sft_run, "too_long_error", "rounds=1", "generate.max_new_tokens=250", "generate.too_long=error", "force=true"))


def test_a_huge_question_is_skipped_by_its_length(tokenizer):  # noqa: F811
    problems = [Problem("short", "Ann has 3 pens.", "", "3"), Problem("huge", "pens " * 20_000, "", "1")]
    kept, skipped = fitting(problems, TINYCOT, tokenizer, context=256, max_new_tokens=64, policy="skip", what="eval")
    assert [p.id for p in kept] == ["short"] and skipped == 1
