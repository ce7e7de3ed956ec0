"""peft=lora: both stages train an adapter only; each round's checkpoint is a plain model with the
adapter merged (what the next round, vLLM and plain transformers load), adapter/ is the adapter; a
resumable training state holds the adapter alone and resumes to the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rationale_loop.config.errors import ConfigError
from rationale_loop.preflight.config_checks import validate
from rationale_loop.run.faults import KILL_AT
from rationale_loop.loop import run_loop

from test_config import compose_config
from test_run_safety import QUICK

LORA = [*QUICK, "peft=lora", "peft.r=4", "sft.lr=1e-2", "sft.save_every=1"]


def _overrides(root: Path, run: str) -> list[str]:
    return [*LORA, f"output_root={root}/runs", f"model.cache_dir={root}/models", f"run={run}"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    run_loop(compose_config(*_overrides(root, "lora"), "rounds=1"))
    return root


def test_checkpoints_are_plain_models_with_only_adapted_modules_changed(lora_run):
    from transformers import AutoModelForCausalLM

    run = lora_run / "runs" / "lora"
    base_dir = next((lora_run / "models").iterdir())
    base = load_file(str(base_dir / "model.safetensors"))
    for k in (0, 1):
        checkpoint = run / f"round_{k:02d}" / "checkpoint"
        assert (run / f"round_{k:02d}" / "adapter" / "adapter_config.json").exists()
        weights = load_file(str(checkpoint / "model.safetensors"))
        assert weights.keys() == base.keys(), "no adapter tensors in a checkpoint: the adapter is merged"
        AutoModelForCausalLM.from_pretrained(str(checkpoint))  # plain transformers, no peft
    sft = load_file(str(run / "round_00" / "checkpoint" / "model.safetensors"))
    changed = {name for name in base if not torch.equal(base[name], sft[name])}
    assert changed and all(name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                                          "gate_proj.weight", "up_proj.weight", "down_proj.weight")) for name in changed)
    assert any("embed_tokens" in name for name in base) and not any("embed_tokens" in name or "norm" in name for name in changed)


@pytest.mark.slow
def test_an_adapter_training_state_holds_the_adapter_alone_and_resumes_exactly(tmp_path):
    def sft(run: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != KILL_AT}
        if kill_at:
            env[KILL_AT] = kill_at
        command = [sys.executable, "-m", "rationale_loop", "sft", *_overrides(tmp_path, run)]
        return subprocess.run(command, capture_output=True, text=True, env=env, check=False)

    assert sft("straight").returncode == 0
    killed = sft("killed", kill_at="train_step:2")
    assert killed.returncode == -signal.SIGKILL
    state = torch.load(tmp_path / "runs/killed/round_00/train_state.pt", weights_only=True)
    assert state["model"] and all("lora_" in name for name in state["model"])
    resumed = sft("killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step 2 of 3" in resumed.stdout + resumed.stderr
    a, b = (load_file(str(tmp_path / f"runs/{run}/round_00/checkpoint/model.safetensors")) for run in ("straight", "killed"))
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a CUDA GPU")
def test_qlora_without_a_gpu_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="peft=qlora .* needs a CUDA GPU"):
        validate(compose_config("peft=qlora"))
