"""SFT + one round on a small config, into a temporary directory: the run's file contract holds and
training changed the weights."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rationale_loop.config.errors import UserError
from rationale_loop.loop import run_loop
from rationale_loop.run.rundir import next_round
from rationale_loop.run.records import Generation, Pair, read_jsonl

from test_config import compose_config

SMALL = [
    "rounds=1",
    "model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=2",
    "task.sft_size=1500", "task.pool_size=32", "task.eval_size=32",
    "sft.epochs=4", "sft.steps=0", "sft.batch_size=32", "sft.micro_batch_size=32", "sft.lr=3e-3", "rank.steps=0", "rank.epochs=3",
    # The mechanics under test, at the sampling and objective settings they were written for.
    "generate.temperature=0.5", "generate.top_p=0.8",
    "generate.n=8", "generate.max_new_tokens=48", "eval.max_new_tokens=48",
    # The final count, not the running one: this half-trained small model gets every count of a chain
    # right too rarely for a 32-question pool to mine pairs.
    "task.arith.answer=final", "task.pool_arith.answer=final", "verify=numeric",
]


ENGINE_EVENTS: list[tuple[str, str]] = []  # what the small run did with generation engines and training, in order


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from rationale_loop.phases import context, train

    root = tmp_path_factory.mktemp("e2e")
    cfg = compose_config(*SMALL, f"output_root={root}/runs", f"model.cache_dir={root}/models", "run=e2e")
    # Spies around the real calls (each still runs): which engines the run made, closed, and when it trained.
    make, close, train_here = context.RunContext.make_backend, context.Engines.close, train.train_here

    def making(self, checkpoint, batch_size):
        ENGINE_EVENTS.append(("make", Path(checkpoint).parent.name))
        return make(self, checkpoint, batch_size)

    def closing(self):
        if self._backend is not None:
            ENGINE_EVENTS.append(("close", Path(self._checkpoint).parent.name))
        close(self)

    def training(ctx, k):
        ENGINE_EVENTS.append(("train", f"round_{k:02d}"))
        train_here(ctx, k)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(context.RunContext, "make_backend", making)
        patch.setattr(context.Engines, "close", closing)
        patch.setattr(train, "train_here", training)
        rows = run_loop(cfg)
    return root / "runs" / "e2e", rows, cfg


@pytest.mark.slow
def test_one_generation_engine_per_round_closed_before_training(small_run):
    """Round 0's evaluation and round 1's sampling ask the same checkpoint, and share one engine; it is
    closed before round 1 trains (training needs its memory), and round 1's checkpoint gets its own."""
    assert ENGINE_EVENTS == [
        ("train", "round_00"), ("make", "round_00"), ("close", "round_00"), ("train", "round_01"),
        ("make", "round_01"), ("close", "round_01"),
    ]


def test_run_directory_has_every_file_of_the_contract(small_run):
    run, rows, _ = small_run
    for name in ("checkpoint", "metrics.json", "config.yaml", "DONE"):
        assert (run / "round_00" / name).exists(), name
    for name in ("generations.jsonl", "pairs.jsonl", "stats.json", "checkpoint", "metrics.json", "config.yaml", "DONE"):
        assert (run / "round_01" / name).exists(), name
    assert [r["round"] for r in rows] == [0, 1]
    for row in rows:
        assert set(row) >= {"round", "eval_accuracy", "samples", "valid", "correct", "pass_at_n", "pairs", "train_loss"}
        assert 0.0 <= row["eval_accuracy"] <= 1.0
    assert next_round(run) == 2


def test_generations_and_pairs_parse_and_agree_with_stats(small_run):
    run, rows, cfg = small_run
    generations = [Generation(**row) for row in read_jsonl(run / "round_01" / "generations.jsonl")]
    pairs = [Pair(**row) for row in read_jsonl(run / "round_01" / "pairs.jsonl")]
    stats = json.loads((run / "round_01" / "stats.json").read_text())
    assert len(generations) == cfg.task.pool_size * cfg.generate.n == stats["samples"] == rows[1]["samples"]
    assert sum(g.valid for g in generations) == stats["valid"]
    assert sum(g.correct for g in generations) == stats["correct"]
    assert all(g.finish_reason in ("stop", "length") for g in generations)
    assert all(not g.valid for g in generations if g.finish_reason == "length")
    assert len(pairs) == stats["pairs"] > 0, "the small config must mine some pairs for the round to train"
    by_key = {(g.question_id, g.sample_index): g for g in generations}
    for pair in pairs:
        chosen, rejected = by_key[(pair.question_id, pair.chosen_sample_index)], by_key[(pair.question_id, pair.rejected_sample_index)]
        assert chosen.correct and chosen.completion == pair.chosen
        assert rejected.valid and not rejected.correct and rejected.completion == pair.rejected


def test_checkpoints_load_with_plain_transformers_and_training_changed_them(small_run):
    run, _, _ = small_run
    sft, round_1 = run / "round_00" / "checkpoint", run / "round_01" / "checkpoint"
    model = AutoModelForCausalLM.from_pretrained(round_1)
    tokenizer = AutoTokenizer.from_pretrained(round_1)
    assert model.config.model_type == "llama" and tokenizer.eos_token_id is not None
    before, after = load_file(sft / "model.safetensors"), load_file(round_1 / "model.safetensors")
    assert before.keys() == after.keys()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) > len(before) // 2, f"only {len(changed)} of {len(before)} tensors changed"
    base = json.loads((run / "round_00" / "metrics.json").read_text())["base_model"]
    base_weights = load_file(f"{base}/model.safetensors")
    assert any(not torch.equal(base_weights[name], before[name]) for name in before)


def test_a_finished_round_is_never_rewritten(small_run):
    run, _, cfg = small_run
    from rationale_loop.loop import Run

    stamp = (run / "round_01" / "DONE").stat().st_mtime_ns
    with pytest.raises(UserError, match="never rewritten"):
        Run(cfg).run_round(1)
    assert (run / "round_01" / "DONE").stat().st_mtime_ns == stamp


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "rationale_loop", *args], capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_round_command_says_where_it_starts_and_inspect_shows_pairs(small_run):
    run, _, cfg = small_run
    common = [*SMALL, f"output_root={run.parent}", f"model.cache_dir={cfg.model.cache_dir}", f"run={run.name}"]
    done = _cli("round", *common)
    assert done.returncode == 0, done.stderr
    assert "all 1 round(s)" in done.stdout and "are done; rounds=2 runs round 2" in done.stdout
    shown = _cli("inspect", *common, "inspect.round=1", "inspect.pairs=2")
    assert shown.returncode == 0, shown.stderr
    first_pair = next(read_jsonl(run / "round_01" / "pairs.jsonl"))
    assert "generation stats" in shown.stdout and "pass_at_n" in shown.stdout
    assert first_pair["question_id"] in shown.stdout and "chosen (sample" in shown.stdout


def test_an_interrupted_round_is_finished_only_with_the_config_it_started_with(small_run, tmp_path):
    """A later round may change the recipe (a kept change, test_workflow.py); a round already under way may
    not: its phases' outputs were made with its own config."""
    import shutil

    from rationale_loop.config.errors import ConfigError
    from rationale_loop.loop import Run

    source, _, cfg = small_run
    run = tmp_path / "runs" / "e2e"
    shutil.copytree(source, run, symlinks=True)
    for name in ("DONE", "metrics.json", "eval.jsonl", "checkpoint", "train.json"):  # killed while training round 1
        path = run / "round_01" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    changed = compose_config(*SMALL, "rank.lr=1e-3", "objective.rank_weight=2",
                             f"output_root={run.parent}", f"model.cache_dir={cfg.model.cache_dir}", f"run={run.name}")
    with pytest.raises(ConfigError) as refused:
        Run(changed).run_round(1)
    message = str(refused.value)
    assert "was interrupted" in message and "rank.lr" in message and "objective.rank_weight" in message
    assert (run / "round_01" / "generations.jsonl").exists() and not (run / "round_01" / "DONE").exists()


@pytest.mark.slow
def test_same_config_and_seed_give_byte_identical_samples_and_pairs(small_run, tmp_path):
    run, _, cfg = small_run
    again = compose_config(*SMALL, f"output_root={tmp_path}/runs", f"model.cache_dir={cfg.model.cache_dir}", "run=again")
    run_loop(again)
    for name in ("generations.jsonl", "pairs.jsonl", "stats.json"):
        assert (tmp_path / "runs/again/round_01" / name).read_bytes() == (run / "round_01" / name).read_bytes(), name


@pytest.mark.parametrize(
    "overrides",
    [
        ["objective=star", "objective.rationalize=true"],
        ["objective=spin"],
        ["objective=cpo_simpo"],
        ["objective=memphis", "objective.listwise=true", "average.method=slerp"],
    ],
    ids=["star+rationalize", "spin", "cpo_simpo", "memphis-listwise-slerp"],
)
@pytest.mark.slow
def test_each_objective_runs_a_round(small_run, tmp_path, overrides):
    import shutil

    run, _, cfg = small_run
    fork = tmp_path / "runs" / "fork"
    shutil.copytree(run / "round_00", fork / "round_00")
    forked = compose_config(*SMALL, *overrides, "force=true", f"output_root={fork.parent}",
                            f"model.cache_dir={cfg.model.cache_dir}", "run=fork")
    rows = run_loop(forked)
    assert [r["round"] for r in rows] == [0, 1]
    metrics = json.loads((fork / "round_01" / "metrics.json").read_text())
    assert metrics["train_items"] > 0 and metrics["train_steps"] > 0
    before = load_file(run / "round_00" / "checkpoint" / "model.safetensors")
    after = load_file(fork / "round_01" / "checkpoint" / "model.safetensors")
    assert any(not torch.equal(before[name], after[name]) for name in before)
    if "objective.rationalize=true" in overrides:
        assert (fork / "round_01" / "rationalizations.jsonl").exists()
        assert "rationalized" in json.loads((fork / "round_01" / "stats.json").read_text())


def test_training_logs_every_step_to_tensorboard(small_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _, _ = small_run
    for k in (0, 1):
        events = EventAccumulator(str(run / "tensorboard" / f"round_{k:02d}"))
        events.Reload()
        steps = json.loads((run / f"round_{k:02d}" / "metrics.json").read_text())["train_steps"]
        assert [e.step for e in events.Scalars("train/loss")] == list(range(1, steps + 1))
        assert {"train/lr", "train/loss"} <= set(events.Tags()["scalars"])
    rounds = EventAccumulator(str(run / "tensorboard" / "rounds"))
    rounds.Reload()
    assert [e.step for e in rounds.Scalars("round/eval_accuracy")] == [0, 1]
