"""`make export`: a finished round as a plain model folder that transformers loads, with a model card
stating the procedure and every round's held-out accuracy from what the run recorded."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from rationale_loop.errors import UserError
from rationale_loop.export import export_round


def test_export_is_a_plain_model_with_a_card_of_the_whole_procedure(two_round_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    done = subprocess.run([sys.executable, "-m", "rationale_loop", "export", str(two_round_run), "--round", "1", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "x"))
    AutoTokenizer.from_pretrained(str(tmp_path / "x"))
    saved = load_file(str(two_round_run / "round_01" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(saved[name], tensor) for name, tensor in model.state_dict().items() if name in saved)

    card = (tmp_path / "x" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    config = OmegaConf.to_container(OmegaConf.load(two_round_run / "round_01" / "config.yaml"))
    for k in (0, 1):
        metrics = json.loads((two_round_run / f"round_{k:02d}" / "metrics.json").read_text())
        p, n = metrics["eval_accuracy"], metrics["eval_questions"]
        assert f"| {k} | {'SFT' if k == 0 else 'memphis'} | {p:.3f} ± {math.sqrt(p * (1 - p) / n):.3f} |" in card
    assert "round_02" not in card and "| 2 |" not in card, "rounds after the exported one are not in its card"
    assert f"| learning rate | {config['rank']['lr']:g}," in card and f"| learning rate | {config['sft']['lr']:g}," in card
    assert f"{config['task']['sft_size']} rows trained on" in card and "### User:" in card
    assert f"samples {config['generate']['n']} completions per pool question" in card


def test_only_a_finished_round_is_exported(two_round_run, tmp_path):
    with pytest.raises(UserError, match="round_05 is not a finished round"):
        export_round(two_round_run, 5, tmp_path / "y")
    assert not (tmp_path / "y").exists()
