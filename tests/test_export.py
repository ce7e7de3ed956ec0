"""`make export`: a finished round as a plain model folder that transformers loads, with a model card
stating the procedure and every round's held-out accuracy from what the run recorded."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from safetensors.torch import load_file

from rationale_loop.config.errors import UserError
from rationale_loop.export import export_round


@pytest.mark.slow
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
    assert card.startswith("---\n") and "library_name: transformers" in card.split("---")[1]
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


def _export(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rationale_loop", "export", *args], capture_output=True, text=True, check=False, cwd=cwd)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def test_export_never_deletes_what_it_did_not_write(two_round_run, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "canary.txt").write_text("keep me")
    refused = _export(str(two_round_run), "--out", str(target))
    assert refused.returncode == 1 and str(target) in _one_line(refused.stderr)
    refused = _export(str(two_round_run), "--out", str(target), "--force")
    assert refused.returncode == 1 and "holds no earlier export" in _one_line(refused.stderr)
    assert (target / "canary.txt").read_text() == "keep me" and sorted(p.name for p in target.iterdir()) == ["canary.txt"]
    # the working directory, a directory above it, home and the root are never export targets
    work = tmp_path / "work"
    work.mkdir()
    (work / "canary.txt").write_text("keep me")
    for out in (".", "..", "/", str(Path.home())):
        done = _export(str(two_round_run), "--out", out, cwd=work)
        assert done.returncode == 1 and "--out" in _one_line(done.stderr), out
    assert sorted(p.name for p in work.iterdir()) == ["canary.txt"] and len(list(tmp_path.iterdir())) == 2


@pytest.mark.slow
def test_re_export_needs_force_and_replaces_only_its_own_files(two_round_run, tmp_path):
    target = tmp_path / "x"
    assert _export(str(two_round_run), "--round", "1", "--out", str(target)).returncode == 0
    (target / "my_notes.md").write_text("mine")
    again = _export(str(two_round_run), "--round", "2", "--out", str(target))
    assert again.returncode == 1 and "--force" in _one_line(again.stderr)
    forced = _export(str(two_round_run), "--round", "2", "--out", str(target), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (target / "my_notes.md").read_text() == "mine" and "| 2 |" in (target / "README.md").read_text()
    for path in target.iterdir():  # the modes of a normal download, not the 0600 of temporary files
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_export_names_follow_the_run_path_and_cannot_collide(tmp_path):
    from rationale_loop.export import default_target

    root = tmp_path / "runs"
    assert default_target(root / "team" / "alice", 0, root) != default_target(root / "bob" / "alice", 0, root)
    assert default_target(root / "team" / "alice", 3, root) == Path("outputs/exports/team/alice/round_03")


@pytest.mark.slow
def test_the_card_never_holds_an_environment_variable(two_round_run, tmp_path):
    run = tmp_path / "runs" / "leaky"
    shutil.copytree(two_round_run, run, symlinks=True)
    for k in (0, 1):
        config = run / f"round_{k:02d}" / "config.yaml"
        saved = yaml.safe_load(config.read_text())
        saved["model"].update(source="pretrained", path="${oc.env:RL_TEST_SECRET}")
        saved["task"]["data_dir"] = "/data/${oc.env:RL_TEST_SECRET}"
        config.write_text(yaml.safe_dump(saved))
    done = subprocess.run([sys.executable, "-m", "rationale_loop", "export", str(run), "--round", "1", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, check=False, env={**os.environ, "RL_TEST_SECRET": "hunter2-s3cr3t"})
    assert done.returncode == 0, done.stderr
    for path in (tmp_path / "out").iterdir():
        assert b"hunter2-s3cr3t" not in path.read_bytes(), path


@pytest.mark.slow
def test_the_card_is_a_hub_model_card_with_its_metadata(two_round_run, tmp_path):
    from huggingface_hub import ModelCard

    assert _export(str(two_round_run), "--out", str(tmp_path / "x"), "--license", "apache-2.0").returncode == 0
    card = ModelCard.load(str(tmp_path / "x" / "README.md"))
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "text-generation"
    assert "rationale_loop" in card.data.tags and "memphis" in card.data.tags
    context = json.loads((tmp_path / "x" / "config.json").read_text())["max_position_embeddings"]
    asked = int(re.search(r"max_new_tokens=(\d+)", card.text).group(1))
    assert asked < context, "the usage example fits the model's context"
    tokenizer_config = json.loads((tmp_path / "x" / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast", "loadable by transformers 4 too"


@pytest.mark.parametrize("prompt_format", ["tinycot", "memphis", "chat-ml", "llama-2", "vicuna", "alpaca", "airoboros"])
@pytest.mark.slow
def test_apply_chat_template_renders_the_prompt_the_model_was_trained_on(two_round_run, tmp_path, prompt_format):
    """Each format's export: plain transformers' apply_chat_template gives the ids the rounds encoded."""
    from transformers import AutoTokenizer

    from rationale_loop.data.formats import get_format
    from rationale_loop.data.encode import Encoder

    run = tmp_path / "runs" / prompt_format
    shutil.copytree(two_round_run, run, symlinks=True)
    for k in (0, 1, 2):  # as if the run had asked its questions in this format
        config = run / f"round_{k:02d}" / "config.yaml"
        config.write_text(config.read_text().replace("prompt_format: tinycot", f"prompt_format: {prompt_format}"))
    assert _export(str(run), "--out", str(tmp_path / "x")).returncode == 0
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "x"))
    fmt = get_format(prompt_format)
    question = "Ann has 3 pens. She finds 2 more. How many pens?"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    trained = Encoder(tokenizer, 256, fmt.reply_end).prompt_ids(fmt.prompt(question))
    assert tokenizer(rendered, add_special_tokens=False)["input_ids"] == list(trained)
    assert rendered.endswith(fmt.prompt(question))


@pytest.mark.slow
def test_a_pretrained_run_s_card_names_its_base_model_and_hub_datasets(two_round_run, tmp_path):
    """As a run of a hub model on a hub dataset would have recorded it (the configs are edited: the
    weights stay the tiny model's, which the card does not look at)."""
    from huggingface_hub import ModelCard

    run = tmp_path / "runs" / "hub"
    shutil.copytree(two_round_run, run, symlinks=True)
    for k in (0, 1, 2):
        config = run / f"round_{k:02d}" / "config.yaml"
        saved = yaml.safe_load(config.read_text())
        saved["model"].update(source="pretrained", path="Qwen/Qwen2.5-0.5B")
        saved["task"]["source"] = "openai/gsm8k"
        config.write_text(yaml.safe_dump(saved))
    metrics = run / "round_00" / "metrics.json"
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "base_model": "Qwen/Qwen2.5-0.5B"}))
    done = _export(str(run), "--round", "1", "--out", str(tmp_path / "x"), "--license", "apache-2.0")
    assert done.returncode == 0, done.stderr
    card = ModelCard.load(str(tmp_path / "x" / "README.md"))
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B" and card.data.datasets == ["openai/gsm8k"] and card.data.license == "apache-2.0"


@pytest.mark.slow
def test_the_card_says_a_round_trained_on_nothing_and_the_batch_a_round_took(two_round_run, tmp_path):
    """As if round 1 had mined no pair and round 2 had fewer pairs than a batch (the metrics are edited)."""
    run = tmp_path / "runs" / "idle"
    shutil.copytree(two_round_run, run, symlinks=True)

    def record(k: int, **values) -> None:
        metrics = run / f"round_{k:02d}" / "metrics.json"
        metrics.write_text(json.dumps({**json.loads(metrics.read_text()), **values}))

    note = "no pair could be mined (no question had both a correct and an incorrect sample)"
    record(1, train_items=0, train_steps=0, pairs=0, note=note)
    record(2, train_items=3, train_steps=1)
    rank = OmegaConf.load(run / "round_02" / "config.yaml").rank
    assert rank.steps == 0 and math.ceil(rank.epochs * 3) < rank.batch_size, "the small run's rank stage runs by epochs"
    assert _export(str(run), "--round", "1", "--out", str(tmp_path / "one")).returncode == 0
    card = (tmp_path / "one" / "README.md").read_text()
    assert "trained on what it got right" not in card
    assert f"its 1 round(s) of self-training trained on nothing (round 1: {note}), so its weights are those of SFT" in card
    assert _export(str(run), "--round", "2", "--out", str(tmp_path / "two")).returncode == 0
    card = (tmp_path / "two" / "README.md").read_text()
    assert "trained on what it got right" in card and f"1 of the 2 rounds trained on nothing and kept the model they started from (round 1: {note})" in card
    assert f"| batch | {rank.batch_size} pairs (micro-batches of {rank.micro_batch_size}); round 2: {math.ceil(rank.epochs * 3)} (all its items) |" in card
