"""Bad config values are refused before any work, by a ConfigError that names the key; the command
line prints the tool's own errors as one line and exits 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rationale_loop.config.errors import ConfigError
from rationale_loop.preflight.config_checks import validate

from test_config import compose_config

# (overrides, a piece of the message that names the key)
BAD = [
    (["generate.temperature=-0.5"], "generate.temperature must be >= 0"),
    (["generate.temperature=0"], "generate.temperature=0 is greedy"),  # with the default n=8
    (["generate.max_new_tokens=0"], "generate.max_new_tokens"),
    (["generate.batch_size=0"], "generate.batch_size"),
    (["eval.batch_size=0"], "eval.batch_size"),
    (["rank.lr=-1e-4"], "rank.lr must be positive"),
    (["sft.lr=0"], "sft.lr must be positive"),
    (["sft.steps=0", "sft.epochs=0"], "sft.epochs must be positive"),
    (["objective.name=nope"], "objective.name=nope is unknown"),
    (["generate.backend=nope"], "generate.backend=nope is unknown"),
    (["rank.optimizer=sgdx"], "rank.optimizer=sgdx is unknown"),
    (["model.dtype=float8"], "model.dtype=float8 is unknown"),
    (["generate.dtype=int4"], "generate.dtype=int4 is unknown"),
    (["verify.kind=nope"], "verify.kind=nope is unknown"),
    (["verify.chain=strict"], "verify.chain=strict is unknown"),
    (["task.verifier=nope"], "task.verifier=nope is unknown"),
    (["task.prompt_format=nope"], "task.prompt_format=nope is unknown"),
    (["objective=memphis", "generate.n=1"], "generate.n=1 cannot give"),
    (["objective=cpo_simpo", "generate.n=1"], "generate.n=1 cannot give"),
    (["objective=rpo", "generate.n=1"], "generate.n=1 cannot give"),
    (["objective=memphis", "objective.rank_scope=step", "objective.step_delimiters=[]"], "objective.step_delimiters"),
    (["objective=memphis", "objective.rank_scope=tokens"], "objective.rank_scope=tokens is unknown"),
    (["objective=memphis", "objective.chosen_floor=-1"], "objective.chosen_floor must be >= 0"),
    (["objective=star", "objective.rank_scope=divergent"], "objective.rank_scope=divergent is an option of the pair objectives"),
    (["objective=spin", "objective.detach_rejected=true"], "objective.detach_rejected=True is an option of the pair objectives"),
    (["+foo=1"], "unknown config key(s) foo"),
    (["+sft.bar=2"], "unknown config key(s) sft.bar"),
    (["run=../../x"], "leaves output_root"),
    (["run=/tmp/abs"], "absolute path"),
    (["run=''"], "a run needs a name"),
    (["output_root=/"], "give runs a directory of their own"),
    (["task.pool_size=0"], "task.pool_size must be positive"),
    (["generate.too_long=maybe"], "generate.too_long=maybe is unknown"),
    (["sft.grad_clip=-1"], "sft.grad_clip"),
    (["objective.beta=0"], "objective.beta must be positive"),
    (["data.formats=[memphis,nope]"], "data.formats=nope is unknown"),
    (["data=chat_mix", "data.sources.subtraction.schema=csvish"], "data.sources.subtraction.schema=csvish is unknown"),
    (["+data.sources.mine={path:a.jsonl,shema:alpaca}"], "data.sources.mine.shema is not a source key"),
    (["+data.sources.mine={path:a.jsonl,max_rows:many}"], "data.sources.mine: Value 'many' of type 'str' could not be converted to Integer"),
    (["+data.sources.mine={schema:alpaca}"], "data.sources.mine.path is empty"),
    (["data.preference_per_round=-1"], "data.preference_per_round must be >= 0"),
    (["data.embedding_threshold=1.5"], "data.embedding_threshold must be in (0, 1]"),
    (["data.near_duplicate_threshold=0"], "data.near_duplicate_threshold must be in (0, 1]"),
    (["data.decontaminate_against=[/no/such/gsm8k_test.jsonl]"], "data.decontaminate_against[0]=/no/such/gsm8k_test.jsonl: no such file"),
    (["launch.kind=slurm"], "launch.kind=slurm is unknown"),
    (["peft=lora", "peft.r=0"], "peft.r must be at least 1"),
    (["launch.device=tpu"], "launch.device=tpu is unknown"),
    (["sft.loss_chunk_tokens=-2"], "sft.loss_chunk_tokens must be >= 0"),
    (["objective=memphis", "rank.packing=true"], "rank.packing packs token-level rows"),
    (["launch=fsdp", "rank.loss_chunk_tokens=4096"], "rank.loss_chunk_tokens reads the output head's weight"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_a_bad_value_is_refused_naming_the_key(overrides, message):
    cfg = compose_config(*overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert message in str(error.value)


@pytest.mark.parametrize("overrides", [
    ["objective=star", "generate.n=1"],  # STaR keeps correct samples: one per question is enough
    ["objective=star", "generate.temperature=0", "generate.n=1"],
    ["objective=rpo", "objective.rank_scope=step"],
    ["objective=cpo_simpo", "objective.chosen_floor=5", "objective.detach_rejected=true", "objective.rank_scope=divergent"],
    ["objective=star", "sft.packing=true", "rank.packing=true", "sft.loss_chunk_tokens=2048", "launch=ddp"],
    ["run=sweep-r1/rank.lr:1e-07+objective:star"],  # the run names make sweep gives its jobs
])
def test_good_combinations_pass(overrides):
    validate(compose_config(*overrides))


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rationale_loop", *args], capture_output=True, text=True, check=False, cwd=cwd)


@pytest.mark.slow
def test_the_command_line_prints_a_config_error_as_one_line_before_any_work(tmp_path):
    done = _cli("round", "generate.temperature=-1", f"output_root={tmp_path}/runs", "run=bad", f"model.cache_dir={tmp_path}/models")
    assert done.returncode == 1
    assert done.stderr.strip() == "rationale_loop: error: generate.temperature must be >= 0 (0: greedy), got -1.0"
    assert not (tmp_path / "runs" / "bad" / "round_00").exists() and not (tmp_path / "models").exists()


@pytest.mark.slow
def test_an_escaping_run_name_is_refused_before_hydra_creates_a_directory(tmp_path):
    root = tmp_path / "project" / "outputs" / "runs"
    done = _cli("loop", f"output_root={root}", "run=../../escaped")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "run='../../escaped' leaves output_root through '..'" in done.stderr
    assert not (tmp_path / "project" / "escaped").exists()


@pytest.mark.slow
def test_the_debug_switch_shows_the_traceback(tmp_path):
    import os

    done = subprocess.run(
        [sys.executable, "-m", "rationale_loop", "round", "generate.batch_size=0", f"output_root={tmp_path}/runs", "run=bad"],
        capture_output=True, text=True, check=False, env={**os.environ, "RATIONALE_LOOP_DEBUG": "1"},
    )
    assert done.returncode != 0 and "Traceback" in done.stderr and "generate.batch_size" in done.stderr


# One schema per option of a group: a key the chosen option does not read, named on the command line.
FOREIGN = [
    (["objective=star", "objective.rank_weight=3"],
     "objective.rank_weight does nothing under objective.name=star, which reads objective.rationalize, objective.sft_replay only; "
     "objective.name=memphis reads it"),
    (["objective=spin", "objective.anchor=chosen"], "objective.anchor does nothing under objective.name=spin"),
    (["objective=cpo_simpo", "objective.listwise=true"], "objective.name=memphis reads it"),
    (["objective=sft", "objective.beta=0.5"], "objective.name=cpo_simpo or rpo or spin reads it"),
    (["objective=rpo", "objective.gamma=1"], "objective.name=cpo_simpo reads it"),
    (["objective=memphis", "objective.step_delimiters=[';']"], None),
    (["peft.r=8"], "peft.r does nothing under peft.method=none, which reads no peft key of its own; peft.method=lora or qlora reads it"),
    (["launch.num_processes=4"], "launch.num_processes does nothing under launch.kind=local"),
    (["launch=ddp", "launch.zero_stage=3"], "launch.kind=deepspeed reads it"),
    (["generate=hf", "generate.gpu_memory_utilization=0.5"], "generate.backend=auto or vllm reads it"),
    (["generate=vllm", "generate.batch_size=8"], "generate.batch_size does nothing under generate.backend=vllm, which reads "
                                                 "generate.chunk_size, "),
    (["average.factor=0.5"], "average.factor does nothing under average.method=none"),
]


@pytest.mark.parametrize("overrides, message", FOREIGN, ids=[" ".join(o) for o, _ in FOREIGN])
def test_a_key_of_another_option_is_refused_at_the_command_line(overrides, message):
    cfg = compose_config(*overrides)
    if message is None:
        validate(cfg, overrides)
        return
    validate(cfg)  # the composed config alone is fine: the key just does nothing
    with pytest.raises(ConfigError) as error:
        validate(cfg, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("overrides", [
    ["objective=memphis", "objective.rank_weight=3", "objective.listwise=true"],
    ["objective=star", "objective.rationalize=true", "generate.n=4"],  # generate.n: every backend reads it
    ["generate=vllm", "generate.gpu_memory_utilization=0.5"],
    ["generate.python=/usr/bin/python3", "generate.batch_size=8", "generate.chunk_size=64"],  # auto, the default: both
    ["peft=lora", "peft.r=8"],
    ["launch=deepspeed", "launch.zero_stage=3"],
    ["average.method=slerp", "average.factor=0.5"],
    ["objective.name=cpo_simpo", "objective.gamma=0.5"],  # the option picked by its key, in the same command
])
def test_a_key_of_the_chosen_option_is_accepted(overrides):
    validate(compose_config(*overrides), overrides)


def test_a_preset_may_set_keys_of_options_it_does_not_pick():
    """The embedded default's experiment sets objective.anchor=chosen for its memphis rounds; picking
    star on top of it is not the user naming a foreign key."""
    overrides = ["objective=star"]
    cfg = compose_config(*overrides)
    assert cfg.objective.anchor == "chosen"
    validate(cfg, overrides)


def test_every_option_declares_keys_of_its_group_and_every_key_has_a_reader():
    from dataclasses import fields

    from rationale_loop.config import schema
    from rationale_loop.preflight.config_checks import option_keys
    from rationale_loop.generate import BACKENDS
    from rationale_loop.phases.launch import LAUNCH_KINDS
    from rationale_loop.models.merge import AVERAGE_METHODS
    from rationale_loop.training.objectives import OBJECTIVES

    closed = {"objective": OBJECTIVES.names(), "generate": BACKENDS.names(), "peft": schema.PEFT_METHODS,
              "launch": LAUNCH_KINDS, "average": AVERAGE_METHODS}
    schemas = {"objective": schema.ObjectiveConfig, "generate": schema.GenerateConfig, "peft": schema.PeftConfig,
               "launch": schema.LaunchConfig, "average": schema.AverageConfig}
    for group, (picker, keys_of) in option_keys().items():
        assert sorted(keys_of) == sorted(closed[group]), group
        names = {f.name for f in fields(schemas[group])}
        declared = {key for keys in keys_of.values() for key in keys}
        assert picker in names and declared <= names - {picker}, (group, declared - names)
    # Every objective key is some objective's: an ObjectiveConfig key no class declares would be read by none.
    _, objective_keys = option_keys()["objective"]
    assert {f.name for f in fields(schema.ObjectiveConfig)} - {"name"} == {k for keys in objective_keys.values() for k in keys}


def test_an_objective_reads_its_declared_options_only():
    from rationale_loop.config.schema import ObjectiveConfig
    from rationale_loop.training.objectives import OBJECTIVES, UndeclaredOption, build_objective

    star = build_objective(ObjectiveConfig(name="star", rationalize=True))
    assert star.cfg.rationalize is True and star.cfg.name == "star"
    with pytest.raises(UndeclaredOption, match="objective.rank_weight"):
        star.cfg.rank_weight
    with pytest.raises(UndeclaredOption):
        getattr(star.cfg, "anchor", "a default does not hide it")
    for name, objective in OBJECTIVES.items():  # each builds from its declared keys alone
        build_objective(ObjectiveConfig(name=name, anchor="chosen"))


@pytest.mark.slow
def test_the_command_line_refuses_a_key_of_another_option_before_any_work(tmp_path):
    done = _cli("round", "objective=star", "objective.rank_weight=3", f"output_root={tmp_path}/runs", "run=bad",
                f"model.cache_dir={tmp_path}/models")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("rationale_loop: error: objective.rank_weight does nothing under objective.name=star")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "bad" / "round_00").exists() and not (tmp_path / "models").exists()


def test_the_docs_table_of_option_keys_is_the_declared_one():
    import re

    from rationale_loop.preflight.config_checks import option_keys

    text = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    table = {}
    for option, keys in re.findall(r"^\| `([\w.]+=\w+)` \| (.*) \|$", text, flags=re.M):
        table[option] = tuple(re.findall(r"`(\w+)`", keys))
    declared = {f"{group}.{picker}={option}": tuple(keys)
                for group, (picker, keys_of) in option_keys().items() for option, keys in keys_of.items()}
    assert table == declared


@pytest.mark.slow
def test_a_pretrained_model_never_runs_on_the_tiny_model_s_settings_unannounced(tmp_path):
    """experiment=tiny_arith (the embedded default) is tuned for a 1M-parameter model from random weights."""
    chosen = ["model=pretrained", "model.path=HuggingFaceTB/SmolLM2-135M-Instruct", "task=gsm8k"]
    with pytest.raises(ConfigError, match=r"embedded default's settings \(experiment=tiny_arith.*add experiment=none"):
        validate(compose_config(*chosen), chosen)
    for experiment in ("experiment=none", "experiment=smollm2_svamp"):
        validate(compose_config(*chosen, experiment), [*chosen, experiment])
    done = subprocess.run([sys.executable, "-m", "rationale_loop", "loop", *chosen, f"output_root={tmp_path}/runs"],
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "experiment=none" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs").exists(), "refused before anything is created"
